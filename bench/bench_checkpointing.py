"""Activation checkpointing on a 60-12 d=128 Admin model: peak activation memory and step time.

    python -m bench.bench_checkpointing [--repeats 3] [--steps 5] [--every 1 2]

Batch 64 x 32 source and target tokens, vocabulary 8000, dropout 0.1, torch Adam, torch.set_num_threads(2).

Memory: a fresh process per measurement builds one model, takes a warm-up step (optimizer state
allocated), resets the resident-set high-water mark (/proc/self/clear_refs), takes one more step and
reports VmHWM - VmRSS before that step: the step's own peak (activations, gradients, autograd buffers).
MALLOC_MMAP_THRESHOLD_ makes freed tensors leave the RSS.

Time: one process per repeat (default allocator: serving every tensor with mmap would add page faults)
builds the models side by side from the same seed, warms each up, then alternates their steps so that
drift on a shared machine hits both alike. Per repeat the median step of each is kept; the medians of
those are printed, and the ratio is the median of the per-repeat ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETUP = r"""
import json, sys, time, torch
from admin_ds.model import build_model
torch.set_num_threads(2)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
def make(every):
    torch.manual_seed(0)
    model = build_model("admin-60-12", d_model=128, nhead=4, ffn_dim=512, src_vocab_size=8000,
                        tgt_vocab_size=8000, checkpoint_every=every).train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)
gen = torch.Generator().manual_seed(0)
src = torch.randint(4, 8000, (64, 32), generator=gen)
tgt = torch.randint(4, 8000, (64, 33), generator=gen)
def step(model, optimizer):
    start = time.perf_counter()
    loss, _ = model(src, tgt[:, :-1], target=tgt[:, 1:], label_smoothing=0.1)
    (loss / tgt[:, 1:].numel()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start
"""

MEMORY = SETUP + r"""
model, optimizer = make({every})
step(model, optimizer)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
step(model, optimizer)
print(json.dumps(status("VmHWM") - before))
"""

TIME = SETUP + r"""
runs = {{every: make(every) for every in {everies!r}}}
times = {{every: [] for every in runs}}
for every, (model, optimizer) in runs.items():
    step(model, optimizer)
for _ in range({steps}):
    for every, (model, optimizer) in runs.items():
        times[every].append(step(model, optimizer))
print(json.dumps({{every: sorted(t)[len(t) // 2] for every, t in times.items()}}))
"""


def run_child(code: str, mmap_everything: bool):
    """Run ``code`` in a fresh interpreter in the checkout (``-c`` puts the working directory on sys.path)."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    if mmap_everything:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True,
                         cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="alternating timed steps per repeat")
    parser.add_argument("--every", type=int, nargs="+", default=[1], help="checkpoint every K layers")
    args = parser.parse_args()
    everies = [0] + [k for k in args.every if k > 0]
    peaks = {every: [] for every in everies}
    seconds = {every: [] for every in everies}
    for _ in range(args.repeats):
        for every in everies:
            peaks[every].append(run_child(MEMORY.format(every=every), True))
        medians = run_child(TIME.format(everies=everies, steps=args.steps), False)
        for every in everies:
            seconds[every].append(medians[str(every)])
    for every in everies:
        label = "off" if every == 0 else f"every {every} layer"
        print(f"checkpointing {label:14s}: step peak {statistics.median(peaks[every]) / 2**20:7.1f} MiB, "
              f"step {statistics.median(seconds[every]):.2f} s (per repeat: {[round(s, 2) for s in seconds[every]]})")
    for every in everies[1:]:
        memory = statistics.median(peaks[every]) / statistics.median(peaks[0])
        time_ratio = statistics.median(a / b for a, b in zip(seconds[every], seconds[0]))
        print(f"every {every}: activation memory ratio (on/off) {memory:.3f}x, step time ratio (on/off) "
              f"{time_ratio:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
