"""Multi-head attention over torch's scaled_dot_product_attention (flash / memory-efficient kernels on GPU).

Masks: ``key_padding_mask`` is boolean [batch, key_time] with True marking padding, the convention of
``torch.nn.Transformer``. SDPA's boolean masks mean the opposite (True = may attend); the conversion
happens once, in ``_sdpa_mask``.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from admin_ds.model.cache import AttentionCache
from admin_ds.model.init import Linear


class MultiheadAttention(nn.Module):
    """Self- or cross-attention with optional key/value cache.

    Self-attention projects queries, keys and values with one packed ``qkv_proj`` [3D, D] (one matmul);
    cross-attention has ``q_proj`` for the decoder stream and a packed ``kv_proj`` [2D, D] for the encoder
    output. Admin's reparameterisation scales these input projections column-wise (reparam.py).

    Args:
        d_model: feature size D.
        nhead: number of heads H (D must be divisible by H).
        dropout: attention-probability dropout.
        cross: True for encoder-decoder attention.
        value_gain / out_gain: Xavier gains for the value and output projections (DeepNorm's β).
        fused_init: initialise query, key and value as one [3D, D] Xavier matrix, as the Admin reference
            (fairseq's in_proj_weight) does; False draws each [D, D] block on its own, as DeepNorm's
            reference does (and as its value gain needs).
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, cross: bool = False,
                 value_gain: float = 1.0, out_gain: float = 1.0, fused_init: bool = False):
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.dropout = dropout
        self.cross = cross
        fan_out = 3 * d_model if fused_init else None
        if cross:
            self.q_proj = Linear(d_model, d_model, fan_out=fan_out)
            self.kv_proj = Linear(d_model, 2 * d_model, gains=(1.0, value_gain), fan_out=fan_out)
        else:
            self.qkv_proj = Linear(d_model, 3 * d_model, gains=(1.0, 1.0, value_gain), fan_out=fan_out)
        self.out_proj = Linear(d_model, d_model, gains=(out_gain,))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.nhead, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]

    def forward(self, query: torch.Tensor, memory: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None, causal: bool = False,
                cache: Optional[AttentionCache] = None) -> torch.Tensor:
        """Attend from ``query`` [B, T, D] to itself (self) or to ``memory`` [B, S, D] (cross).

        ``causal`` hides future keys (decoder self-attention without a cache). With a ``cache``, self-
        attention appends this call's keys/values to it and cross-attention projects ``memory`` only once.
        Returns [B, T, D].
        """
        if self.cross:
            q = self._heads(self.q_proj(query))
            if cache is not None and cache.key is not None:
                k, v = cache.key, cache.value
            else:
                k, v = (self._heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))
                if cache is not None:
                    cache.key, cache.value = k, v
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(query).chunk(3, dim=-1))
            if cache is not None:
                if cache.key is not None:
                    k = torch.cat([cache.key, k], dim=2)
                    v = torch.cat([cache.value, v], dim=2)
                cache.key, cache.value = k, v
        attn_mask, is_causal = _sdpa_mask(key_padding_mask, causal, q.size(2), k.size(2), q.device)
        with _sdpa_backends(q):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                 dropout_p=self.dropout if self.training else 0.0)  # [B, H, T, Dh]
        batch, _, time, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, time, -1))


def _sdpa_backends(q: torch.Tensor) -> contextlib.AbstractContextManager:
    """SDPA's own choice of kernel, except for bf16 training on a CPU.

    There torch's flash kernel for CPU runs its backward about 10x slower in bf16 than in fp32 (1.14 s
    against 0.10 s per step of a 6-6 d=256 model on 4k tokens, 2 cores), which eats the bf16 matmul gain;
    the unfused math kernel keeps it (a whole step 1.41 s against 2.30 s). bench/README.md has the figures.
    The math kernel by default copies query, key and value to fp32 and its output back (and the same in
    backward): 24 full-size copies per decoder layer and step. In bf16 it computes the scores with bf16
    matmuls instead (fp32 accumulation inside the GEMM, bf16 result) and the softmax in the CPU kernel's
    fp32 registers; docs/speed.md has what this costs in accuracy and gains in time.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        return _math_in_input_precision()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _math_in_input_precision():
    """The math SDPA kernel without its fp32 copies of query, key and value. The switch is torch's public
    ``allow_fp16_bf16_reduction_math_sdp`` (named for CUDA, read by the CPU math kernel too; torch >= 2.5);
    it is global state, so it is restored on exit and only set around this call."""
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(before)


def _sdpa_mask(key_padding_mask: Optional[torch.Tensor], causal: bool, q_len: int, k_len: int,
               device: torch.device) -> tuple[Optional[torch.Tensor], bool]:
    """Combine padding and causality into SDPA's (attn_mask, is_causal): True in attn_mask = may attend.

    Without padding the causal case stays ``is_causal=True`` so that fused kernels remain eligible.
    When cached keys precede the queries, query i sits at key position k_len - q_len + i.
    """
    if key_padding_mask is None:
        if causal and q_len == k_len:
            return None, True
        if not causal:
            return None, False
    allowed = None
    if key_padding_mask is not None:
        allowed = (~key_padding_mask)[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        offset = k_len - q_len
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)  # [T, S]
        allowed = future if allowed is None else allowed & future
    return allowed, False
