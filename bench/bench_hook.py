"""Wall time of Admin's rank-0 hook vs one training step, 2 ranks, ZeRO-2, CPU.

    torchrun --nproc_per_node 2 -m bench.bench_hook [--repeats 5]

Model admin 60-12 d=128 (4 heads, FFN 512, vocabulary 8000); each rank's batch 64 x 32 tokens. The hook
(profiling forward on every rank, broadcast, write into working and master weights) and the training step
(the product's ``train_step``: forward, backward, optimizer step) alternate; medians of the repeats. Also
prints the ω curve.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env
from bench.tensor_batch import tensor_batch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    rank, world, device = training_engine.init_distributed()
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-5, "torch_adam": True}}}
    torch.manual_seed(0)
    model = build_model("admin-60-12", d_model=128, nhead=4, ffn_dim=512, src_vocab_size=8000, tgt_vocab_size=8000)
    engine = training_engine.initialize(model, config)
    gen = torch.Generator().manual_seed(rank)
    src = torch.randint(4, 8000, (64, 32), generator=gen)
    tgt = torch.randint(4, 8000, (64, 33), generator=gen)
    batch = tensor_batch(src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous())

    def hook():
        return training_engine.omega_hook(engine, src, tgt[:, :-1])

    def step():
        training_engine.train_step(engine, batch, label_smoothing=0.1)

    def timed(fn):
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - start

    profile = hook()
    step()  # warm-up of both paths
    hook_times, step_times = [], []
    for _ in range(args.repeats):
        hook_times.append(timed(hook))
        step_times.append(timed(step))
    if rank == 0:
        h, s = statistics.median(hook_times), statistics.median(step_times)
        print(f"hook  median {h:.3f} s (runs {[round(t, 3) for t in hook_times]})")
        print(f"step  median {s:.3f} s (runs {[round(t, 3) for t in step_times]})")
        print(f"hook / step = {h / s:.2f} steps (target <= 2)")
        enc, dec = profile.encoder, profile.decoder
        print("ω encoder (every 10th sublayer):", [round(v, 2) for v in enc[::10]], "last", round(enc[-1], 3))
        print("ω decoder (every 6th sublayer): ", [round(v, 2) for v in dec[::6]], "last", round(dec[-1], 3))
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
