"""Pure-PyTorch model code: nothing here imports DeepSpeed."""

from admin_ds.model.cache import AttentionCache, DecoderCache
from admin_ds.model.config import PRESETS, RESIDUAL_SCHEMES, ModelConfig, preset_config
from admin_ds.model.transformer import EncoderOut, TranslationModel


def build_model(arch: str = "admin-tiny", **overrides) -> TranslationModel:
    """A freshly initialised model from a preset name plus field overrides (``encoder_layers=...``)."""
    return TranslationModel(preset_config(arch, **overrides))


__all__ = ["AttentionCache", "DecoderCache", "EncoderOut", "ModelConfig", "PRESETS", "RESIDUAL_SCHEMES",
           "TranslationModel", "build_model", "preset_config"]
