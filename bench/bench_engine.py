"""DeepSpeed engine step vs a plain torch training loop on the same model, one CPU rank.

    python -m bench.bench_engine [--repeats 5] [--steps 5] [--arch admin-6-6] [--batch 64x32] [--dtype bf16]

Same model (admin 6-6 d=256 by default), same batch, same optimizer (torch Adam), same loss (label-smoothed
sum over target tokens / their count): the plain loop does forward, backward, clip-free Adam step; the
engine runs the product's step (``admin_ds.training.engine.train_step``) under ds_configs/cpu_fp32.json
(ZeRO-0) and ds_configs/cpu_zero2_fp32.json (ZeRO-2), or with ``--dtype bf16`` cpu_bf16.json and
cpu_zero2_bf16.json against a plain loop that trains a bf16 model from fp32 master weights (what DeepSpeed's
bf16 does: bf16 forward and backward, gradients cast to fp32, Adam on the fp32 copy, weights cast back).
Runs alternate; medians of the repeats; ratio = plain time / engine time (>= 1 means the engine costs
nothing).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from admin_ds.data import Batch
from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env
from bench.tensor_batch import tensor_batch

REPO = Path(__file__).resolve().parents[1]


SIZES = {"admin-6-6": dict(d_model=256, nhead=4, ffn_dim=1024), "admin-tiny": {}}
VOCAB, LABEL_SMOOTHING = 8000, 0.1


def make_batch(rows: int = 64, length: int = 32, vocab: int = VOCAB) -> Batch:
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (rows, length), generator=gen)
    tgt = torch.randint(4, vocab, (rows, length + 1), generator=gen)
    return tensor_batch(src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous())


def new_model(arch: str = "admin-6-6"):
    torch.manual_seed(0)
    return build_model(arch, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, **SIZES.get(arch, {}))


class PlainLoop:
    def __init__(self, arch: str = "admin-6-6"):
        self.model = new_model(arch).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def step(self, batch: Batch) -> None:
        loss_sum, _ = self.model(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                                 label_smoothing=LABEL_SMOOTHING, src_padded=batch.src_padded)
        (loss_sum / batch.ntokens).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class PlainBf16Loop:
    """A bf16 model trained from fp32 master weights, in plain torch: the anchor for what a bf16 step costs."""

    def __init__(self, arch: str = "admin-6-6"):
        self.model = new_model(arch).train()
        self.master = [p.detach().clone() for p in self.model.parameters()]  # fp32
        self.model.bfloat16()
        self.optimizer = torch.optim.Adam(self.master, lr=1e-4, betas=(0.9, 0.98))

    def step(self, batch: Batch) -> None:
        loss_sum, _ = self.model(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                                 label_smoothing=LABEL_SMOOTHING, src_padded=batch.src_padded)
        (loss_sum / batch.ntokens).backward()
        with torch.no_grad():
            for master, param in zip(self.master, self.model.parameters()):
                master.grad = param.grad.float()
                param.grad = None
            self.optimizer.step()
            for master, param in zip(self.master, self.model.parameters()):
                param.copy_(master)
        self.optimizer.zero_grad(set_to_none=True)


CONFIGS = {"fp32": ("cpu_fp32.json", "cpu_zero2_fp32.json"), "bf16": ("cpu_bf16.json", "cpu_zero2_bf16.json")}


class EngineLoop:
    def __init__(self, config_name: str, arch: str = "admin-6-6"):
        config = json.loads((REPO / "ds_configs" / config_name).read_text())
        config["optimizer"]["params"]["lr"] = 1e-4
        self.engine = training_engine.initialize(new_model(arch), config)

    def step(self, batch: Batch) -> None:
        training_engine.train_step(self.engine, batch, LABEL_SMOOTHING)


def timed(loop, batch, steps: int) -> float:
    loop.step(batch)  # warm-up: first-step allocations
    start = time.perf_counter()
    for _ in range(steps):
        loop.step(batch)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--arch", choices=sorted(SIZES), default="admin-6-6")
    parser.add_argument("--batch", default="64x32", help="sentences x tokens")
    parser.add_argument("--dtype", choices=sorted(CONFIGS), default="fp32", help="training precision")
    args = parser.parse_args()
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    training_engine.init_distributed()
    torch.set_num_threads(2)
    batch = make_batch(*(int(n) for n in args.batch.split("x")))
    zero0, zero2 = CONFIGS[args.dtype]
    plain = PlainBf16Loop(args.arch) if args.dtype == "bf16" else PlainLoop(args.arch)
    loops = {"plain": plain, "zero0": EngineLoop(zero0, args.arch), "zero2": EngineLoop(zero2, args.arch)}
    times = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            times[name].append(timed(loop, batch, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = batch.src_tokens.numel() + batch.tgt_output.numel()
    for name, value in medians.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"{name:6s} median {value:.3f} s/step (range {spread}), {tokens / value:,.0f} tokens/s")
    for name in ("zero0", "zero2"):
        print(f"speed ratio {name} / plain torch: {medians['plain'] / medians[name]:.3f}x")
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
