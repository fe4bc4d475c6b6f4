"""The special token ids: the one place that says which id means padding, unknown, BOS and EOS.

Sentencepiece models are trained with these ids (``data/tokenizer.py``), prepared datasets record them in
``meta.json``, batches are padded with them, and ``ModelConfig`` takes them as its defaults. A model config
may carry other ids (a plain export from elsewhere); everything this package writes uses these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from admin_ds.errors import UserError


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the four special pieces of a vocabulary."""

    pad: int = 0
    unk: int = 1
    bos: int = 2
    eos: int = 3

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: object, source: str) -> SpecialIds:
        """Read ``{"pad": 0, "unk": 1, "bos": 2, "eos": 3}``; a UserError names ``source`` otherwise."""
        if not isinstance(values, dict) or set(values) != {"pad", "unk", "bos", "eos"}:
            raise UserError(f"{source}: special ids must be an object with pad, unk, bos and eos, got {values!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise UserError(f"{source}: special ids must be non-negative integers, got {values!r}")
        return cls(**values)


SPECIAL_IDS = SpecialIds()
