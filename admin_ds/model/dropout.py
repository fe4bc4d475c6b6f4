"""Dropout with a cheaper CPU path.

On CPU, ``nn.Dropout`` draws one Bernoulli float per element and keeps a float mask for backward: on a
60-12 d=128 step that was a quarter of the forward time (156 calls at ~3.8 ms against ~5 ms for an FFN
matmul), paid twice under activation checkpointing. Here one 64-bit random word feeds four elements as
16-bit uniforms and the mask is kept as booleans (a quarter of the memory). The keep probability is
quantised to 1/65536 and the scale uses the quantised value, so E[dropout(x)] = x holds exactly.

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

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` with P(True) = 1 - p (p rounded to 1/65536) and the matching scale."""
    drop_levels = round(p * _LEVELS)
    numel = shape.numel()
    # random_(min, None) fills all 64 bits with no modulo (randint's range arithmetic costs ~15% more).
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    uniform16 = words.view(torch.int16)[:numel]  # each in [-32768, 32767], uniform
    mask = uniform16.ge(drop_levels - _LEVELS // 2).view(shape)
    return mask, _LEVELS / (_LEVELS - drop_levels)


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
            mask, scale = keep_mask(x.shape, self.p, x.device)
            if _tape.masks is not None:
                _tape.masks.append((mask, scale, torch.get_rng_state()))
        # where, not x * mask: a CPU multiply by a boolean mask first copies the mask to x's dtype (mixed
        # inputs are cast), in forward and again in backward. where keeps the boolean mask for backward;
        # scaling a fresh tensor in place saves nothing. The scale stays a Python float (not a bf16 mask
        # value, which would round 1/0.9 to 1.109 and bias E[dropout(x)]).
        return torch.where(mask, x, 0.0).mul_(scale)
