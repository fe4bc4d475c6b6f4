"""Dropout with a cheaper CPU path.

On CPU, ``nn.Dropout`` draws one Bernoulli float per element and keeps a float mask for backward: on a
60-12 d=128 step that was a quarter of the forward time (156 calls at ~3.8 ms against ~5 ms for an FFN
matmul), paid twice under activation checkpointing. Here one 64-bit random word feeds four elements as
16-bit uniforms. For fp32 the mask is kept as booleans (a quarter of the memory). For bf16 and fp16 it is
kept as 1.0 / 0.0 in the activation's dtype, built with integer ops on the uniforms' bits: on a CPU a
multiply of a bf16 tensor by a boolean one first casts the booleans to bf16, and that cast (in forward and
again in backward) ran ~50x slower than the bf16 multiply itself (docs/speed.md). The keep
probability is quantised to 1/65536 and the scale (a Python float, applied in fp32 arithmetic) uses the
quantised value, so E[dropout(x)] = x holds exactly.

CUDA and other devices keep ``F.dropout``: their fused kernel (Philox RNG, in-kernel mask) is already fast.
Randomness comes from torch's default CPU generator, so ``torch.manual_seed`` and the RNG states saved in
training checkpoints work as with ``nn.Dropout``. Under activation checkpointing the recomputation
replays the forward's masks instead of drawing them again (``mask_tape_contexts``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # values a 16-bit uniform takes; p is quantised to whole levels (1/65536)
_INT16_MIN = -(1 << 15)
# The bit pattern of 1.0 in each 16-bit float dtype that gets its mask as numbers.
_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}


def _uniforms(numel: int, device: torch.device) -> torch.Tensor:
    """[numel] int16, each of the 65536 values in [-32768, 32767] equally likely: the four 16-bit quarters
    of ceil(numel / 4) random 64-bit words."""
    # random_(min, None) fills all 64 bits with no modulo (randint's range arithmetic costs ~15% more).
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    return words.view(torch.int16)[:numel]


def _drop_rule(p: float) -> tuple[int, float]:
    """(threshold, scale) for drop probability ``p``: an element whose uniform is below ``threshold`` is
    dropped, the others are kept and multiplied by ``scale``.

    The drop_levels = round(p * 65536) smallest of the 65536 int16 values, [-32768, threshold), drop: P(drop)
    is p rounded to 1/65536, and scale = 1 / P(keep) = 65536 / (65536 - drop_levels) is exact for it."""
    drop_levels = round(p * _LEVELS)
    return _INT16_MIN + drop_levels, _LEVELS / (_LEVELS - drop_levels)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """(keep, scale): ``keep`` a boolean mask of ``shape`` (the activation's, e.g. [batch, time, dim]),
    True with probability 1 - p (``_drop_rule``)."""
    threshold, scale = _drop_rule(p)
    keep = _uniforms(shape.numel(), device).ge(threshold)  # [numel]
    return keep.view(shape), scale


def keep_mask_as(shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """(keep, scale): ``keep_mask``'s draws and decisions as 1.0 / 0.0 of the 16-bit float ``dtype`` (a key of
    _ONE_BITS), of ``shape`` (e.g. [batch, time, dim]). Needs p >= 1/65536 (Dropout sends smaller ones to
    F.dropout)."""
    threshold, scale = _drop_rule(p)
    uniforms = _uniforms(shape.numel(), device)  # [numel] int16
    # Three in-place int16 passes and no boolean tensor, so no bool -> float cast (see the module docstring):
    #   clamp to [threshold - 1, threshold]: threshold - 1 where dropped (uniform < threshold), threshold where kept;
    #   minus (threshold - 1): 0 where dropped, 1 where kept, keep_mask's decisions;
    #   times 1.0's bit pattern: the bits of 0.0 and of 1.0, read as ``dtype`` in place.
    # Nothing overflows: threshold - 1 >= -32768 as drop_levels >= 1, and 1 * _ONE_BITS[dtype] < 32768.
    zero_or_one = uniforms.clamp_(threshold - 1, threshold).sub_(threshold - 1)
    bits = zero_or_one.mul_(_ONE_BITS[dtype])
    return bits.view(dtype).view(shape), scale


class _Tape(threading.local):
    """The masks of the checkpointed segment running on this thread: recorded in its forward, replayed
    (in the same order) when backward recomputes it. Thread-local because autograd may recompute on its
    own threads."""

    masks: Optional[list] = None
    replay: Optional[Iterator] = None


_tape = _Tape()


@contextmanager
def _set_tape(masks: Optional[list], replay: Optional[Iterator]):
    saved = _tape.masks, _tape.replay
    _tape.masks, _tape.replay = masks, replay
    try:
        yield
    finally:
        _tape.masks, _tape.replay = saved


def mask_tape_contexts():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: the recomputation reuses the forward's
    dropout masks instead of drawing them again (the random draws are most of a CPU dropout's cost, and
    the boolean masks are a quarter of the activation they replace). Each entry also keeps the CPU
    generator's state after its draw (5 KB). A replay that does not match the recording raises."""
    masks: list = []
    return _set_tape(masks, None), _set_tape(None, iter(masks))


def _replayed(x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """The next recorded (mask, scale, RNG state) of the recomputed segment, checked against ``x``.

    A recomputation that asks for more masks than the forward drew, or for a mask of another shape, is
    not the same computation: raise instead of drawing fresh masks silently."""
    recorded = next(_tape.replay, None)
    if recorded is None:
        raise RuntimeError("dropout mask replay: the recomputation asked for more masks than its forward drew")
    if recorded[0].shape != x.shape:
        raise RuntimeError(f"dropout mask replay: recorded a mask of shape {tuple(recorded[0].shape)}, the "
                           f"recomputation needs {tuple(x.shape)}")
    return recorded


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train/eval behaviour); any shape -> same shape."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        # Under torch.compile (compiled.py) the graph's own dropout replaces the CPU path: its 64-bit random_
        # and the tape (thread-local state, RNG get/set) would break the graph, and inductor fuses the mask
        # into the neighbouring kernels anyway. A checkpointed segment then gets the same masks back from
        # torch.utils.checkpoint's RNG restore, as on CUDA.
        if torch.compiler.is_compiling() or x.device.type != "cpu" or round(self.p * _LEVELS) == 0:
            return F.dropout(x, self.p, training=True)
        if _tape.replay is not None:
            mask, scale, rng_after = _replayed(x)
            # Leave the generator where the draw left it, so that other random ops in the segment
            # (attention dropout inside SDPA) see the stream they saw in the forward.
            torch.set_rng_state(rng_after)
        else:
            if x.dtype in _ONE_BITS:
                mask, scale = keep_mask_as(x.shape, self.p, x.device, x.dtype)
            else:
                mask, scale = keep_mask(x.shape, self.p, x.device)
            if _tape.masks is not None:
                _tape.masks.append((mask, scale, torch.get_rng_state()))
        # Autograd keeps the mask for backward (mul saves its other operand); scaling a fresh tensor in
        # place saves nothing. The scale stays a Python float: as a bf16 mask value 1/0.9 would round to
        # 1.109 and bias E[dropout(x)].
        return x.mul(mask).mul_(scale)
