"""Model configuration: one dataclass, named presets, and validation at the edge.

The shape fields can be overridden from the command line (``--encoder-layers`` -> ``encoder_layers``; the
flags are built from the fields made with ``option``) and every field from ``build_model(arch, **overrides)``.
Unknown keys are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from admin_ds.errors import UserError
from admin_ds.options import option
from admin_ds.vocab import SPECIAL_IDS

RESIDUAL_SCHEMES = ("admin", "post-ln", "pre-ln", "deepnorm")


@dataclass
class ModelConfig:
    """Shape and options of an encoder-decoder Transformer for translation."""

    encoder_layers: int = option(6, help="number of encoder layers N")
    decoder_layers: int = option(6, help="number of decoder layers M")
    d_model: int = option(512, help="model width D")
    nhead: int = option(8, help="attention heads (must divide D)")
    ffn_dim: int = option(2048, help="feed-forward inner width")
    residual: str = option("admin", help="residual scheme", choices=RESIDUAL_SCHEMES)
    dropout: float = option(0.1, help="dropout on embeddings and residual branches")
    attention_dropout: float = option(0.0, help="dropout on attention probabilities")
    activation_dropout: float = option(0.0, help="dropout after the FFN's ReLU")
    src_vocab_size: int = 32000
    tgt_vocab_size: int = 32000
    # The paper's 60L-12L recipe shares one table for source, target and output (joint vocabulary).
    share_all_embeddings: bool = True
    share_decoder_input_output_embed: bool = True
    max_positions: int = option(1024, help="longest sequence the position table covers",
                                unset="the prepared data's longest pair + 2")
    layer_norm_eps: float = 1e-5
    pad_id: int = SPECIAL_IDS.pad
    bos_id: int = SPECIAL_IDS.bos
    eos_id: int = SPECIAL_IDS.eos
    # Activation checkpointing: recompute each run of this many layers in backward (0 = off).
    checkpoint_every: int = option(0, help="recompute every run of K layers in backward (activation "
                                           "checkpointing; 0 = off)", flags=("--checkpoint-activations",),
                                   metavar="K")

    def validate(self) -> ModelConfig:
        """Check that the numbers fit together; raise UserError naming the first problem."""
        for name in ("encoder_layers", "decoder_layers", "d_model", "nhead", "ffn_dim", "src_vocab_size",
                     "tgt_vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.d_model % self.nhead:
            raise UserError(f"model config: d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if self.residual not in RESIDUAL_SCHEMES:
            raise UserError(f"model config: residual must be one of {', '.join(RESIDUAL_SCHEMES)}, "
                            f"got {self.residual!r}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"model config: {name} must be in [0, 1), got {value!r}")
        if self.share_all_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise UserError(f"model config: share_all_embeddings needs one vocabulary, but src_vocab_size "
                            f"{self.src_vocab_size} != tgt_vocab_size {self.tgt_vocab_size}")
        if self.checkpoint_every < 0:
            raise UserError(f"model config: checkpoint_every must be >= 0, got {self.checkpoint_every}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
                raise UserError(f"model config: {name} {value} is outside the vocabulary")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{source}: unknown model config key(s): {', '.join(unknown)}")
        return cls(**values).validate()


_PAPER = dict(d_model=512, nhead=8, ffn_dim=2048, dropout=0.1)
_BIG = dict(d_model=1024, nhead=16, ffn_dim=4096, dropout=0.3)

PRESETS: dict[str, dict] = {
    # CPU-sized models for tests, the demo and the benchmarks.
    "admin-tiny": dict(encoder_layers=2, decoder_layers=2, d_model=32, nhead=4, ffn_dim=64,
                       src_vocab_size=64, tgt_vocab_size=64, dropout=0.1),
    "admin-demo": dict(encoder_layers=6, decoder_layers=6, d_model=128, nhead=4, ffn_dim=256,
                       src_vocab_size=1000, tgt_vocab_size=1000, dropout=0.1, max_positions=256),
    "admin-small": dict(encoder_layers=6, decoder_layers=6, d_model=256, nhead=4, ffn_dim=1024,
                        src_vocab_size=8000, tgt_vocab_size=8000, dropout=0.1),
    # The papers' configurations.
    "admin-6-6": dict(encoder_layers=6, decoder_layers=6, **_PAPER),
    "admin-18-18": dict(encoder_layers=18, decoder_layers=18, **_PAPER),
    "admin-60-12": dict(encoder_layers=60, decoder_layers=12, **_PAPER),
    "admin-60-12-big": dict(encoder_layers=60, decoder_layers=12, **_BIG),
    "admin-100-100": dict(encoder_layers=100, decoder_layers=100, **_PAPER),
}


def preset_config(arch: str, **overrides) -> ModelConfig:
    """Build a validated config from a preset name and field overrides (None values are ignored)."""
    if arch not in PRESETS:
        raise UserError(f"unknown preset {arch!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[arch])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(values, source=f"preset {arch}")
