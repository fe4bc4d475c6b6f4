"""DeepSpeed engine step vs a plain torch training loop on the same model, one CPU rank (issue 5).

    python bench/bench_engine.py [--repeats 5] [--steps 5]

Same model (admin 6-6 d=256), same batch, same optimizer (torch Adam): the plain loop does forward,
backward, clip-free Adam step; the engine runs ds_configs/cpu_fp32.json (ZeRO-0) and
ds_configs/cpu_zero2_fp32.json (ZeRO-2). Runs alternate; medians of the repeats; ratio = plain time /
engine time (>= 1 means the engine costs nothing).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env

REPO = Path(__file__).resolve().parents[1]


def make_batch(vocab: int):
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (64, 32), generator=gen)
    tgt = torch.randint(4, vocab, (64, 33), generator=gen)
    return src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()


def new_model():
    torch.manual_seed(0)
    return build_model("admin-6-6", d_model=256, nhead=4, ffn_dim=1024, src_vocab_size=8000, tgt_vocab_size=8000)


class PlainLoop:
    def __init__(self):
        self.model = new_model().train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def step(self, src, tgt_in, tgt_out):
        loss_sum, _ = self.model(src, tgt_in, target=tgt_out, label_smoothing=0.1)
        (loss_sum / tgt_out.numel()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class EngineLoop:
    def __init__(self, config_name: str):
        config = json.loads((REPO / "ds_configs" / config_name).read_text())
        config["optimizer"]["params"]["lr"] = 1e-4
        self.engine = training_engine.initialize(new_model(), config)

    def step(self, src, tgt_in, tgt_out):
        loss_sum, _ = self.engine(src, tgt_in, target=tgt_out, label_smoothing=0.1)
        self.engine.backward(loss_sum / tgt_out.numel())
        self.engine.step()


def timed(loop, batch, steps: int) -> float:
    loop.step(*batch)  # warm-up: first-step allocations
    start = time.perf_counter()
    for _ in range(steps):
        loop.step(*batch)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    training_engine.init_distributed()
    torch.set_num_threads(2)
    batch = make_batch(8000)
    loops = {"plain": PlainLoop(), "zero0": EngineLoop("cpu_fp32.json"), "zero2": EngineLoop("cpu_zero2_fp32.json")}
    times = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            times[name].append(timed(loop, batch, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = batch[0].numel() + batch[2].numel()
    for name, value in medians.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"{name:6s} median {value:.3f} s/step (range {spread}), {tokens / value:,.0f} tokens/s")
    for name in ("zero0", "zero2"):
        print(f"speed ratio {name} / plain torch: {medians['plain'] / medians[name]:.3f}x")
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
