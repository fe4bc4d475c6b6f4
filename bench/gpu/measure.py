"""Measurements of the GPU check that do not depend on the model: the matmul rate, peak memory, host syncs."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.gpu.batches import GIB


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of a square matrix product on random data: bf16 8192^3 on a GPU (the mean of 20 after 3
    warm-ups), fp32 512^3 on a CPU (the best of 5: a shared CPU's figure is a code-path check only)."""
    gpu = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if gpu else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def seconds_each(reps: int) -> float:
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        if gpu:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps

    seconds_each(3)
    return 2.0 * n ** 3 / (seconds_each(20) if gpu else min(seconds_each(1) for _ in range(5)))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
    except OSError:
        pass  # then VmHWM also covers what came before: a CPU figure is a code-path check only


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmHWM in /proc/self/status")


def host_syncs(device: torch.device, step: Callable, batch) -> tuple[Optional[int], list]:
    """Synchronizing CUDA calls during one step, and the five lines that made most of them (CUDA only)."""
    if device.type != "cuda":
        return None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()  # after the mode is off: this wait is the timing's, not the step's
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs).most_common(5)
    return len(syncs), [f"{site} x{n}" for site, n in sites]
