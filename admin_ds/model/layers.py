"""Encoder and decoder layers: attention and feed-forward branches inside ``Residual`` connections.

Sublayer order, which is also Admin's profiling order (docs/admin.md): encoder layer = self-attention, FFN;
decoder layer = self-attention, cross-attention, FFN.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from admin_ds.model.attention import MultiheadAttention
from admin_ds.model.cache import AttentionCache
from admin_ds.model.dropout import Dropout
from admin_ds.model.init import Linear
from admin_ds.model.residual import Residual


class FeedForward(nn.Module):
    """ReLU feed-forward branch: [B, T, D] -> [B, T, F] -> [B, T, D]."""

    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float, gain: float = 1.0):
        super().__init__()
        self.fc1 = Linear(d_model, ffn_dim, gains=(gain,))
        self.fc2 = Linear(ffn_dim, d_model, gains=(gain,))
        self.activation_dropout = Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: fc1's output is a view of its 2-D GEMM result, and an in-place ReLU on a view makes
        # autograd rebuild the base in backward (CopySlices + AsStridedBackward: four [B, T, F] copies and a
        # zero fill per layer), which costs more than the second buffer it saves.
        return self.fc2(self.activation_dropout(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each in a residual connection. x [B, S, D], padding_mask [B, S] (True = pad)."""

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, scheme: str, alpha: float = 1.0,
                 gain: float = 1.0, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, attention_dropout, value_gain=gain, out_gain=gain,
                                            fused_init=scheme != "deepnorm")
        self.self_attn_residual = Residual(d_model, scheme, alpha, dropout, eps)
        self.ffn = FeedForward(d_model, ffn_dim, activation_dropout, gain)
        self.ffn_residual = Residual(d_model, scheme, alpha, dropout, eps)

    def residuals(self) -> list[Residual]:
        """This layer's residual connections in sublayer (profiling) order."""
        return [self.self_attn_residual, self.ffn_residual]

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.self_attn_residual(x, lambda h: self.self_attn(h, key_padding_mask=padding_mask))
        return self.ffn_residual(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, then FFN.

    x [B, T, D]; memory [B, S, D]; memory_padding_mask [B, S] (True = pad). With caches, x holds only the
    new target positions and the self-attention cache holds the earlier ones.
    """

    def __init__(self, d_model: int, nhead: int, ffn_dim: int, scheme: str, alpha: float = 1.0,
                 gain: float = 1.0, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, attention_dropout, value_gain=gain, out_gain=gain,
                                            fused_init=scheme != "deepnorm")
        self.self_attn_residual = Residual(d_model, scheme, alpha, dropout, eps)
        self.cross_attn = MultiheadAttention(d_model, nhead, attention_dropout, cross=True,
                                             value_gain=gain, out_gain=gain, fused_init=scheme != "deepnorm")
        self.cross_attn_residual = Residual(d_model, scheme, alpha, dropout, eps)
        self.ffn = FeedForward(d_model, ffn_dim, activation_dropout, gain)
        self.ffn_residual = Residual(d_model, scheme, alpha, dropout, eps)

    def residuals(self) -> list[Residual]:
        return [self.self_attn_residual, self.cross_attn_residual, self.ffn_residual]

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_padding_mask: Optional[torch.Tensor],
                self_cache: Optional[AttentionCache] = None,
                cross_cache: Optional[AttentionCache] = None) -> torch.Tensor:
        x = self.self_attn_residual(x, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        x = self.cross_attn_residual(
            x, lambda h: self.cross_attn(h, memory, key_padding_mask=memory_padding_mask, cache=cross_cache))
        return self.ffn_residual(x, self.ffn)
