"""Token embeddings scaled by sqrt(D) plus fixed sinusoidal positions (Vaswani et al. 2017)."""

from __future__ import annotations

import math

import torch
from torch import nn

from admin_ds.model.dropout import Dropout
from admin_ds.model.init import EmbeddingTable


def sinusoidal_positions(max_positions: int, d_model: int) -> torch.Tensor:
    """Position table [max_positions, D]: sin in the first half of the features, cos in the second."""
    half = d_model // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if d_model % 2:
        table = torch.cat([table, torch.zeros(max_positions, 1)], dim=1)
    return table


class Embedding(nn.Module):
    """tokens [B, T] -> dropout(sqrt(D) * table[tokens] + positions[offset : offset + T]) [B, T, D].

    ``table`` may be shared with another Embedding or the output projection (tied weights).
    Positions are a non-persistent buffer: they are derived from the config, never trained.
    """

    def __init__(self, table: nn.Embedding, max_positions: int, dropout: float):
        super().__init__()
        self.table = table
        self.scale = math.sqrt(table.embedding_dim)
        self.register_buffer("positions", sinusoidal_positions(max_positions, table.embedding_dim),
                             persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        time = tokens.size(1)
        x = self.table(tokens) * self.scale
        # The buffer stays fp32 when DeepSpeed casts parameters to bf16/fp16: follow the weights' dtype.
        x = x + self.positions[offset: offset + time].to(x.dtype)
        return self.dropout(x)


def make_table(vocab_size: int, d_model: int, pad_id: int) -> nn.Embedding:
    """An embedding table [V, D] with fairseq's init (see init.EmbeddingTable)."""
    return EmbeddingTable(vocab_size, d_model, padding_idx=pad_id)
