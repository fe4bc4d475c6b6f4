"""bf16 training on a CPU: one forward+backward of admin-small in fp32, in bf16 with SDPA's own kernel
choice (flash for CPU), and in bf16 as the model runs it (SDPA's math kernel while training, attention.py).

    python -m bench.bench_cpu_bf16 [--repeats 5] [--tokens 4096]

The batch has Tatoeba's shape (about 410 sentences of 10 tokens for 4096 target tokens, 8k vocabulary);
6-6 layers, d=256, FFN 1024, 4 heads, dropout 0.1, 2 threads. Each repeat times every kind once, in turn;
medians of the repeats and their ratios to fp32 are printed. On a CPU without native bf16 (no avx512_bf16 or
amx_bf16 in /proc/cpuinfo) bf16 is emulated and slower than fp32: the CPU recipe then trains in fp32.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from admin_ds.model import attention as attention_module
from admin_ds.model import build_model


def step_seconds(model, batch, dtype, flash: bool) -> float:
    src, tgt_in, tgt_out = batch
    model.to(dtype).zero_grad(set_to_none=True)
    # "flash" replaces the model's choice of kernel by SDPA's default for CPU bf16 (its flash kernel)
    choice = (lambda q: sdpa_kernel([SDPBackend.FLASH_ATTENTION])) if flash else None
    original = attention_module._sdpa_backends
    if choice is not None:
        attention_module._sdpa_backends = choice
    try:
        start = time.perf_counter()
        loss, _ = model(src, tgt_in, target=tgt_out, label_smoothing=0.1)
        loss.backward()
        return time.perf_counter() - start
    finally:
        attention_module._sdpa_backends = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    sentences = args.tokens // 10
    batch = (torch.randint(4, 8000, (sentences, 9)), torch.randint(4, 8000, (sentences, 10)),
             torch.randint(4, 8000, (sentences, 10)))
    model = build_model("admin-small", residual="admin").train()
    kinds = {"fp32": (torch.float32, False), "bf16, SDPA's flash kernel": (torch.bfloat16, True),
             "bf16, math kernel (ours)": (torch.bfloat16, False)}
    for dtype, flash in kinds.values():  # warm-up: first calls allocate and pick kernels
        step_seconds(model, batch, dtype, flash)
    times = {name: [] for name in kinds}
    for _ in range(args.repeats):
        for name, (dtype, flash) in kinds.items():
            times[name].append(step_seconds(model, batch, dtype, flash))
    native = any(flag in Path("/proc/cpuinfo").read_text() for flag in ("avx512_bf16", "amx_bf16")) \
        if Path("/proc/cpuinfo").exists() else False
    print(f"admin-small forward+backward, {sentences}x10 target tokens, native bf16: {native}, "
          f"{args.repeats} repeats (median, min-max)")
    base = statistics.median(times["fp32"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:26s} {med:6.3f} s  ({min(values):.3f}-{max(values):.3f})  {base / med:4.2f}x fp32's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
