"""Layers that initialise themselves inside ``__init__`` (via ``reset_parameters``).

``deepspeed.zero.Init`` partitions each module's parameters the moment its ``__init__`` returns, so an
init applied afterwards by a parent module would write into empty partitions and be lost silently.
Initialising in ``reset_parameters`` keeps the same weights with or without ZeRO-3's ``zero.Init``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn


class Linear(nn.Linear):
    """nn.Linear with zero bias and Xavier-uniform weights, one gain per equal block of output rows.

    ``gains=(1, 1, β)`` on a packed [3D, D] query/key/value projection gives DeepNorm's β to values only;
    each block is then initialised as a matrix of its own. ``fan_out`` instead draws every block with the
    bound of a [fan_out, in] matrix: the reference initialises query, key and value as one fused [3D, D]
    weight (std sqrt(1 / 2D), not sqrt(1 / D)), also where we keep them as separate q / kv projections.
    ``init_std`` switches to N(0, init_std²) (an untied output projection).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gains: Sequence[float] = (1.0,),
                 init_std: Optional[float] = None, fan_out: Optional[int] = None):
        object.__setattr__(self, "gains", tuple(gains))
        object.__setattr__(self, "init_std", init_std)
        object.__setattr__(self, "fan_out", fan_out)
        super().__init__(in_features, out_features, bias)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init_std is not None:
                nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
            else:
                for block, gain in zip(self.weight.chunk(len(self.gains), dim=0), self.gains):
                    fan_out = self.fan_out or block.size(0)
                    bound = gain * math.sqrt(6.0 / (block.size(1) + fan_out))  # xavier_uniform's bound
                    nn.init.uniform_(block, -bound, bound)
            if self.bias is not None:
                nn.init.zeros_(self.bias)


class EmbeddingTable(nn.Embedding):
    """nn.Embedding with fairseq's init, N(0, D^-1/2), and a zero padding row."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=0.0, std=self.embedding_dim ** -0.5)
            if self.padding_idx is not None:
                self.weight[self.padding_idx].zero_()
