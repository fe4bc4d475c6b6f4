"""The typed key/value cache for incremental decoding, passed in and returned by the decoder.

Beam search keeps one cache per batch of hypotheses and calls ``reorder(new_order)`` after each step so
that row ``i`` of every cached tensor belongs to the hypothesis now in row ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class AttentionCache:
    """Cached keys and values of one attention module, each [batch, heads, time, head_dim]."""

    key: Optional[torch.Tensor] = None
    value: Optional[torch.Tensor] = None

    def reorder(self, new_order: torch.Tensor) -> None:
        if self.key is not None:
            self.key = self.key.index_select(0, new_order)
            self.value = self.value.index_select(0, new_order)


@dataclass
class DecoderCache:
    """Self-attention keys/values grow one step at a time; cross-attention ones are computed once.

    ``memory_padding_mask`` [batch, src_time] (True = padding) travels with the cache so that reordering
    keeps it aligned with the cached encoder keys.
    """

    self_attn: list[AttentionCache] = field(default_factory=list)
    cross_attn: list[AttentionCache] = field(default_factory=list)
    memory_padding_mask: Optional[torch.Tensor] = None
    steps: int = 0

    @classmethod
    def empty(cls, num_layers: int, memory_padding_mask: Optional[torch.Tensor] = None) -> DecoderCache:
        return cls([AttentionCache() for _ in range(num_layers)], [AttentionCache() for _ in range(num_layers)],
                   memory_padding_mask)

    def reorder(self, new_order: torch.Tensor) -> DecoderCache:
        for entry in self.self_attn + self.cross_attn:
            entry.reorder(new_order)
        if self.memory_padding_mask is not None:
            self.memory_padding_mask = self.memory_padding_mask.index_select(0, new_order)
        return self
