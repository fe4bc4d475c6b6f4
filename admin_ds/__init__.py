"""admin-ds: very deep Admin Transformers for machine translation, trained with DeepSpeed.

    import admin_ds
    model = admin_ds.build_model("admin-60-12", src_vocab_size=32000, tgt_vocab_size=32000)
    model = admin_ds.load_model("runs/exp/export")      # any checkpoint this package writes
    logits = model(src_tokens, tgt_tokens)               # [batch, tgt_time, tgt_vocab]

    translator = admin_ds.Translator("runs/exp", beam=5)   # or engine="ctranslate2" on a converted model
    translator.translate(["Guten Morgen!"])                # -> ["Good morning!"]
"""

from admin_ds.model import ModelConfig, TranslationModel, build_model

__version__ = "0.1.0"


def load_model(path):
    """Load a DeepSpeed checkpoint directory (any ZeRO stage), an fp32 export or a plain export, in eval mode."""
    from admin_ds.checkpoints.load import load_model as _load_model

    return _load_model(path)


def __getattr__(name):
    """``Translator`` is imported on first use: ``import admin_ds`` stays light (no tokenizers, no tqdm)."""
    if name == "Translator":
        from admin_ds.inference.translator import Translator

        return Translator
    raise AttributeError(f"module 'admin_ds' has no attribute {name!r}")


__all__ = ["ModelConfig", "TranslationModel", "Translator", "build_model", "load_model", "__version__"]
