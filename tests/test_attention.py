"""Attention kernels: bf16 training on a CPU runs SDPA's math kernel (its flash kernel's bf16 backward is
~10x slower there, bench/bench_cpu_bf16.py), and both kernels compute the same attention."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from admin_ds.model.attention import MultiheadAttention, _sdpa_backends


def test_math_kernel_only_for_bf16_training_on_cpu():
    chosen = []

    def record(kind):
        context = _sdpa_backends(kind)
        chosen.append(type(context).__name__)

    record(torch.zeros(2, dtype=torch.bfloat16, requires_grad=True))
    record(torch.zeros(2, dtype=torch.bfloat16))               # decoding: no backward to be slow in
    record(torch.zeros(2, dtype=torch.float32, requires_grad=True))
    assert chosen[0] != "nullcontext" and chosen[1:] == ["nullcontext", "nullcontext"]


def test_bf16_attention_and_gradients_match_the_flash_kernel():
    torch.manual_seed(0)
    attention = MultiheadAttention(64, 4).to(torch.bfloat16)
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)

    def run(force_flash: bool):
        attention.zero_grad()
        query = x.clone().requires_grad_()
        if force_flash:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                # the guard in attention.py would switch to math; bypass it to get the reference kernel
                out = torch.nn.functional.scaled_dot_product_attention(
                    *(attention._heads(t) for t in attention.qkv_proj(query).chunk(3, dim=-1)), is_causal=True)
                out = attention.out_proj(out.transpose(1, 2).reshape(3, 7, -1))
        else:
            out = attention(query, causal=True)
        out.float().pow(2).sum().backward()
        return out.float(), query.grad.float(), attention.qkv_proj.weight.grad.float()

    for ours, flash in zip(run(False), run(True)):
        # elementwise the two differ by bf16's rounding (1/128 relative); as a whole they agree to ~1%
        assert (ours - flash).norm() < 0.02 * flash.norm(), ((ours - flash).norm() / flash.norm()).item()
