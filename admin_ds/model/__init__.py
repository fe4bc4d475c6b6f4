"""Pure-PyTorch model code: the Transformer, its residual schemes, Admin's ω statistics and profile file, and
the reparameterisation into a plain Post-LN model. Nothing here imports DeepSpeed or torch.distributed."""

from admin_ds.model.cache import AttentionCache, DecoderCache
from admin_ds.model.config import PRESETS, RESIDUAL_SCHEMES, ModelConfig, preset_config
from admin_ds.model.omega import OMEGA_INITS, OmegaProfile, profile_omega
from admin_ds.model.transformer import EncoderOut, TranslationModel


def build_model(arch: str = "admin-tiny", **overrides) -> TranslationModel:
    """A freshly initialised model from a preset name plus field overrides (``encoder_layers=...``)."""
    return TranslationModel(preset_config(arch, **overrides))


__all__ = ["AttentionCache", "DecoderCache", "EncoderOut", "ModelConfig", "OMEGA_INITS", "OmegaProfile", "PRESETS",
           "RESIDUAL_SCHEMES", "TranslationModel", "build_model", "preset_config", "profile_omega"]
