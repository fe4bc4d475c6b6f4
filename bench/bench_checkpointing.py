"""Activation checkpointing on a 60-12 d=128 Admin model: peak activation memory and step time (issue 5).

    python bench/bench_checkpointing.py [--repeats 3]

Each measurement runs in a fresh subprocess: build the model and a torch Adam, take one warm-up step
(optimizer state allocated), reset the resident-set high-water mark (/proc/self/clear_refs), take one more
step, and report VmHWM - VmRSS before that step (step time comes from a second child with the default allocator): the step's own peak (activations, gradients, autograd
buffers). MALLOC_MMAP_THRESHOLD_ makes freed tensors leave the RSS. Batch 64 x 32 source and target tokens,
vocabulary 8000, dropout 0.1, torch.set_num_threads(2). Runs alternate; medians are printed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {repo!r})
from admin_ds.model import build_model
torch.set_num_threads(2)
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
torch.manual_seed(0)
model = build_model("admin-60-12", d_model=128, nhead=4, ffn_dim=512, src_vocab_size=8000, tgt_vocab_size=8000,
                    checkpoint_every={every}).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
gen = torch.Generator().manual_seed(0)
src = torch.randint(4, 8000, (64, 32), generator=gen)
tgt = torch.randint(4, 8000, (64, 33), generator=gen)
def step():
    loss, _ = model(src, tgt[:, :-1], target=tgt[:, 1:], label_smoothing=0.1)
    (loss / tgt[:, 1:].numel()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
step()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
start = time.perf_counter()
step()
seconds = time.perf_counter() - start
print(json.dumps({{"peak": status("VmHWM") - before, "seconds": seconds}}))
"""


def run_child(every: int, mmap_everything: bool) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    if mmap_everything:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=repo, every=every)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(every: int) -> dict:
    """Memory from a child whose freed tensors leave the RSS; time from one with the default allocator
    (serving every tensor with mmap costs page faults that would distort the time)."""
    return {"peak": run_child(every, True)["peak"], "seconds": run_child(every, False)["seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {0: [], 1: []}
    for _ in range(args.repeats):
        for every in runs:
            runs[every].append(measure(every))
    med = {every: {key: statistics.median(r[key] for r in values) for key in ("peak", "seconds")}
           for every, values in runs.items()}
    for every, values in med.items():
        label = "off" if every == 0 else f"every {every} layer"
        print(f"checkpointing {label:14s}: step peak {values['peak'] / 2**20:7.1f} MiB, step {values['seconds']:.2f} s "
              f"(runs: {[round(r['seconds'], 2) for r in runs[every]]})")
    print(f"activation memory ratio (on/off): {med[1]['peak'] / med[0]['peak']:.3f}x")
    print(f"step time ratio (on/off): {med[1]['seconds'] / med[0]['seconds']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
