"""admin-ds: very deep Admin Transformers for machine translation, trained with DeepSpeed.

    import admin_ds
    model = admin_ds.build_model("admin-60-12", src_vocab_size=32000, tgt_vocab_size=32000)
    model = admin_ds.load_model("runs/exp/export")      # any checkpoint this package writes
    logits = model(src_tokens, tgt_tokens)               # [batch, tgt_time, tgt_vocab]
"""

from admin_ds.model import ModelConfig, TranslationModel, build_model

__version__ = "0.1.0"


def load_model(path):
    """Load a DeepSpeed checkpoint directory (any ZeRO stage), an fp32 export or a plain export, in eval mode."""
    from admin_ds.checkpoints.load import load_model as _load_model

    return _load_model(path)


__all__ = ["ModelConfig", "TranslationModel", "build_model", "load_model", "__version__"]
