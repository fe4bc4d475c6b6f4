"""admin_ds Dropout vs torch.nn.Dropout on CPU: forward and forward+backward time, mask memory.

    python -m bench.bench_dropout [--repeats 7] [--p 0.1]

Input [64, 32, 128] fp32 (one residual branch of the 60-12 d=128 benchmark batch), 2 threads. Each
repeat times 50 calls of each kind, alternating; medians of the repeats are printed. "Saved" is what
autograd keeps for backward per call (nn.Dropout: a float mask; ours: a boolean one).
"""

import argparse
import statistics
import time

import torch
from torch import nn

from admin_ds.model.dropout import Dropout


def per_call(fn, calls: int = 50) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(sizes)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(64, 32, 128, requires_grad=True)
    grad = torch.randn(64, 32, 128)
    kinds = {"nn.Dropout": nn.Dropout(args.p).train(), "admin_ds Dropout": Dropout(args.p).train()}
    times = {name: {"forward": [], "forward+backward": []} for name in kinds}
    for _ in range(args.repeats):
        for name, module in kinds.items():
            with torch.no_grad():
                times[name]["forward"].append(per_call(lambda: module(x)))
            times[name]["forward+backward"].append(per_call(lambda: module(x).backward(grad)))
    for name, module in kinds.items():
        med = {k: statistics.median(v) * 1e3 for k, v in times[name].items()}
        print(f"{name:17s}: forward {med['forward']:.3f} ms, forward+backward {med['forward+backward']:.3f} ms, "
              f"saved {saved_bytes(module, x) / 2**20:.2f} MiB")
    for kind in ("forward", "forward+backward"):
        ratio = statistics.median(times["nn.Dropout"][kind]) / statistics.median(times["admin_ds Dropout"][kind])
        print(f"speed-up, {kind}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
