"""This machine's matmul FLOP/s at the shapes a model's training step multiplies: the yardstick for the
step's achieved FLOP/s (the goal: a step should reach >= 0.6x of it on CPU).

One training step's matrix products, forward and backward: every Linear of [N tokens, in] -> [N, out]
gives three GEMMs of 2*N*in*out FLOPs (output, input gradient, weight gradient); attention gives per head
two batched products forward (scores, weighted values) and four backward. Each distinct shape is timed
alone with torch.mm / torch.bmm (median of repeats) and the rate is sum(count * flops) / sum(count * time).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import torch

from admin_ds.model import ModelConfig


def linear_gemms(tokens: int, fan_in: int, fan_out: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of forward, input-gradient and weight-gradient products of one Linear."""
    return [(tokens, fan_in, fan_out), (tokens, fan_out, fan_in), (fan_out, tokens, fan_in)]


def attention_bmms(batch_heads: int, q_len: int, k_len: int, head_dim: int) -> list[tuple[int, int, int, int]]:
    """(b, m, k, n) of the forward (q k^T, p v) and backward (dp, dv, dq, dk) batched products."""
    return [(batch_heads, q_len, head_dim, k_len), (batch_heads, q_len, k_len, head_dim),
            (batch_heads, q_len, head_dim, k_len), (batch_heads, k_len, q_len, head_dim),
            (batch_heads, q_len, k_len, head_dim), (batch_heads, k_len, q_len, head_dim)]


def step_products(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> Counter:
    """How many of each product shape one training step runs: {(b, m, k, n): count}, b = 1 for a GEMM."""
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.tgt_vocab_size
    src, tgt, heads = batch * src_len, batch * tgt_len, batch * cfg.nhead
    products: Counter = Counter()

    def add_linear(tokens: int, fan_in: int, fan_out: int, times: int) -> None:
        for m, k, n in linear_gemms(tokens, fan_in, fan_out):
            products[(1, m, k, n)] += times

    def add_attention(q_len: int, k_len: int, times: int) -> None:
        for shape in attention_bmms(heads, q_len, k_len, d // cfg.nhead):
            products[shape] += times

    enc, dec = cfg.encoder_layers, cfg.decoder_layers
    for fan_in, fan_out in ((d, 3 * d), (d, d), (d, f), (f, d)):
        add_linear(src, fan_in, fan_out, enc)
    add_attention(src_len, src_len, enc)
    for fan_in, fan_out in ((d, 3 * d), (d, d), (d, d), (d, d), (d, f), (f, d)):
        add_linear(tgt, fan_in, fan_out, dec)
    add_linear(src, d, 2 * d, dec)  # cross-attention keys and values of the memory
    add_attention(tgt_len, tgt_len, dec)
    add_attention(tgt_len, src_len, dec)
    add_linear(tgt, d, v, 1)  # output projection
    return products


def product_seconds(shape: tuple[int, int, int, int], dtype: torch.dtype, repeats: int) -> float:
    b, m, k, n = shape
    a, w = torch.randn(b, m, k, dtype=dtype), torch.randn(b, k, n, dtype=dtype)
    run = (lambda: torch.mm(a[0], w[0])) if b == 1 else (lambda: torch.bmm(a, w))
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_shapes_matmul_rate(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int,
                             dtype: torch.dtype = torch.float32, repeats: int = 7) -> dict:
    """{"flop_per_s", "flops", "seconds"} of the step's products run alone, at the current thread count."""
    flops = seconds = 0.0
    for shape, count in step_products(cfg, batch, src_len, tgt_len).items():
        b, m, k, n = shape
        flops += count * 2.0 * b * m * k * n
        seconds += count * product_seconds(shape, dtype, repeats)
    return {"flop_per_s": flops / seconds, "flops": flops, "seconds": seconds}
