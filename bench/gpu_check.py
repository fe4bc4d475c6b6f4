"""GPU check (issue 5): 60-12 Admin models in fp16 with ZeRO-2, FusedAdam, fused SDPA kernels,
activation checkpointing on and off, on one GPU. Prints one JSON line per configuration and writes
them to OUT/gpu_check.jsonl.

    deepspeed --num_gpus 1 bench/gpu_check.py --out DIR [--steps 20]

Every attention call runs inside ``sdpa_kernel([FLASH_ATTENTION, EFFICIENT_ATTENTION])``: a call that
would fall back to the unfused math kernel raises instead, so a finished run proves the fused paths.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import training_flops  # noqa: E402

from admin_ds.model import build_model  # noqa: E402
from admin_ds.training import engine as training_engine  # noqa: E402
from admin_ds.training.schedule import inverse_sqrt_schedule  # noqa: E402

PEAK_FP16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_FP16.items() if key in name), 989e12)


def random_batch(batch: int, src_len: int, tgt_len: int, vocab: int, device) -> tuple:
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (batch, src_len), generator=gen)
    tgt = torch.randint(4, vocab, (batch, tgt_len + 1), generator=gen)
    lengths = torch.randint(src_len // 2, src_len + 1, (batch,), generator=gen)
    src[torch.arange(src_len)[None, :] >= lengths[:, None]] = 0  # padding, as real batches have
    return src.to(device), tgt[:, :-1].contiguous().to(device), tgt[:, 1:].contiguous().to(device)


def run(arch: str, checkpoint_every: int, steps: int, batch: int, length: int, device) -> dict:
    config = json.loads(Path("ds_configs/zero2_fp16.json").read_text())
    config["optimizer"]["params"]["lr"] = 7e-4
    torch.manual_seed(0)
    model = build_model(arch, src_vocab_size=32000, tgt_vocab_size=32000, checkpoint_every=checkpoint_every)
    params = sum(p.numel() for p in model.parameters())
    engine = training_engine.initialize(model, config, None, inverse_sqrt_schedule(100, 7e-4, 1e-7))
    src, tgt_in, tgt_out = random_batch(batch, length, length, 32000, device)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    profile = training_engine.omega_hook(engine, src, tgt_in)
    hook_s = time.perf_counter() - start
    times, losses, scales = [], [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            loss_sum, _ = engine(src, tgt_in, target=tgt_out, label_smoothing=0.1)
            loss = loss_sum / tgt_out.ne(0).sum()
            engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(round(float(loss), 4))
        scales.append(training_engine.loss_scale(engine))
    timed = sorted(times[3:])
    step_s = timed[len(timed) // 2]
    tokens = int(src.ne(0).sum() + tgt_out.ne(0).sum())
    flops = training_flops(model.cfg, batch, length, length)
    result = {"arch": arch, "d_model": model.cfg.d_model, "params_M": round(params / 1e6, 1),
              "checkpoint_every": checkpoint_every, "batch": f"{batch}x{length}", "median_step_s": round(step_s, 4),
              "tokens_per_s": round(tokens / step_s), "mfu": round(flops / step_s / peak_flops(), 4),
              "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2), "hook_s": round(hook_s, 3),
              "omega_last": [round(profile.encoder[-1], 3), round(profile.decoder[-1], 3)],
              "loss_first_last": [losses[0], losses[-1]], "loss_scales": scales, "skipped": int(engine.skipped_steps),
              "fused_adam": type(engine.optimizer.optimizer).__name__ if hasattr(engine.optimizer, "optimizer")
              else type(engine.optimizer).__name__}
    engine.destroy()
    del engine, model
    torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    _, _, device = training_engine.init_distributed()
    out = Path(args.out) / "gpu_check.jsonl"
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for arch, batch, length in (("admin-60-12", 64, 64), ("admin-60-12-big", 64, 64)):
        for checkpoint_every in (0, 1):
            try:
                result = run(arch, checkpoint_every, args.steps, batch, length, device)
            except Exception as err:  # report and go on: one failure must not hide the other figures
                result = {"arch": arch, "checkpoint_every": checkpoint_every, "error": repr(err)[:500]}
            print(json.dumps(result), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(result) + "\n")
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
