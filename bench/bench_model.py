"""Forward+backward throughput of our Admin model vs a stock ``torch.nn.Transformer`` of identical shape.

    python -m bench.bench_model            # full run (median of 7 timed repetitions per config)
    python -m bench.bench_model --quick    # median of 5, shorter warm-up

Both sides do the same work per step: shared embedding table (scaled, plus sinusoidal positions, dropout),
encoder with the source padding mask, causal decoder with the memory padding mask, output projection tied
to the embedding table, cross-entropy over the non-pad targets, backward. Dropout 0.1 on both, attention
dropout 0 on both. The stock model (bench/gpu/stock.py, the GPU check's too) also applies nn.Transformer's
final encoder/decoder LayerNorms (two extra LayerNorms; a negligible amount of work, left in because that
is what stock nn.Transformer does).

Timing alternates ours / stock inside one process (the order flips every repetition) and reports the
median. Peak memory is measured per model in a fresh subprocess: the resident-set high-water mark after two
fwd+bwd steps minus the RSS after building the model and batch (the high-water mark is reset at that point
through /proc/self/clear_refs). tracemalloc does not see torch's allocator, so RSS is what we use; glibc is
told to serve every allocation above 128 KiB with mmap (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave
the RSS, and the difference is the step's own peak (activations, gradients, autograd buffers). We read
VmHWM from /proc rather than getrusage's ru_maxrss, which a child inherits from its (bigger) parent.
Runs with torch.set_num_threads(2) (the CI machine).

It also prints the step's achieved FLOP/s (the model FLOPs of admin_ds/model/flops.py over our median step time)
as a share of this machine's matmul FLOP/s at the model's own product shapes, measured in the same run
(bench/matmul_rate.py): the part of the step that is not matrix work shows as the gap to 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from admin_ds.model import ModelConfig, TranslationModel, preset_config
from admin_ds.model.flops import training_flops
from bench.gpu.stock import StockTransformer
from bench.matmul_rate import model_shapes_matmul_rate

REPO = Path(__file__).resolve().parents[1]

VOCAB = 8000
PAD = 0
BATCH, SRC_LEN, TGT_LEN = 32, 32, 32
DROPOUT = 0.1
CONFIGS = {
    "18-6 d=256": dict(encoder_layers=18, decoder_layers=6, d_model=256, nhead=4, ffn_dim=1024),
    "60-12 d=128": dict(encoder_layers=60, decoder_layers=12, d_model=128, nhead=4, ffn_dim=512),
}


def model_config(shape: dict) -> ModelConfig:
    """Our model's config at ``shape``; the stock model is built from the same one."""
    return preset_config("admin-small", residual="admin", dropout=DROPOUT, attention_dropout=0.0,
                         activation_dropout=0.0, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, pad_id=PAD, **shape)


def make_model(side: str, shape: dict) -> nn.Module:
    """``ours`` (our Admin model) or ``stock`` (nn.Transformer with the same embedding and output,
    bench/gpu/stock.py) of one shape, seeded alike."""
    torch.manual_seed(0)
    cfg = model_config(shape)
    model = TranslationModel(cfg) if side == "ours" else StockTransformer(cfg)
    return model.train()


def make_batch(rows: int = BATCH, src_len: int = SRC_LEN, tgt_len: int = TGT_LEN,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded src [B, S], tgt input [B, T] and tgt output [B, T]; about 1 row in 4 is shorter."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (rows, src_len), generator=gen)
    tgt = torch.randint(4, VOCAB, (rows, tgt_len + 1), generator=gen)
    for row in range(0, rows, 4):
        src[row, src_len - 1 - row % src_len // 2:] = PAD
        tgt[row, tgt_len - row % tgt_len // 2:] = PAD
    tgt[:, 0] = 2  # BOS
    return src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()


def train_step(model: nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> None:
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD)
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model: nn.Module, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, *batch)
    return (time.perf_counter() - start) / steps


def measure_memory(side: str, name: str) -> None:
    """Subprocess entry: print JSON {"peak_mib": ...} for one fwd+bwd of one fresh model."""
    torch.set_num_threads(2)
    model = make_model(side, CONFIGS[name])
    batch = make_batch()
    before = proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS: build-time peaks do not count
    except OSError:
        pass  # older kernels: VmHWM then also covers the build, which can only lower the figure
    for _ in range(2):
        train_step(model, *batch)
    peak = proc_status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "rss_after_build_mib": before / 1024}))


def proc_status_kib(field: str) -> int:
    """VmRSS (current resident set) or VmHWM (its high-water mark since exec or clear_refs), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_of(side: str, name: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.bench_model", "--memory", side, name], check=True,
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                                        "MALLOC_MMAP_THRESHOLD_": "131072"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(name: str, reps: int, warmup: int, steps: int) -> dict:
    shape = CONFIGS[name]
    models = {side: make_model(side, shape) for side in ("ours", "stock")}
    params = {side: sum(p.numel() for p in m.parameters()) for side, m in models.items()}
    batch = make_batch(BATCH, SRC_LEN, TGT_LEN)
    src, tgt_in, _ = batch
    tokens = int(src.ne(PAD).sum() + tgt_in.ne(PAD).sum())
    for side in models:
        timed(models[side], batch, warmup)
    seconds = {"ours": [], "stock": []}
    yardstick = []  # this machine's matmul FLOP/s at the model's shapes, measured next to every repetition
    for rep in range(reps):
        order = ("ours", "stock") if rep % 2 == 0 else ("stock", "ours")
        for side in order:
            seconds[side].append(timed(models[side], batch, steps))
        rate = model_shapes_matmul_rate(models["ours"].cfg, BATCH, SRC_LEN, TGT_LEN, repeats=3)
        yardstick.append(rate["flop_per_s"])
    medians = {side: statistics.median(s) for side, s in seconds.items()}
    memory = {side: memory_of(side, name) for side in models}
    # Achieved FLOP/s (the model's matmul FLOPs, admin_ds/model/flops.py) against the machine's at the same shapes,
    # one ratio per repetition (both measured back to back), then their median.
    step_flops = training_flops(models["ours"].cfg, BATCH, SRC_LEN, TGT_LEN)
    rate_ratios = [step_flops / s / y for s, y in zip(seconds["ours"], yardstick)]
    return {
        "achieved_gflop_per_s": step_flops / medians["ours"] / 1e9,
        "matmul_gflop_per_s": statistics.median(yardstick) / 1e9,
        "flop_rate_ratio": statistics.median(rate_ratios), "flop_rate_ratios": [round(r, 3) for r in rate_ratios],
        "config": name, "params": params, "tokens_per_step": tokens,
        "tokens_per_s": {side: tokens / medians[side] for side in models},
        "ms_per_step": {side: 1000 * medians[side] for side in models},
        "all_ms": {side: [round(1000 * s, 1) for s in seconds[side]] for side in models},
        "ratio": medians["stock"] / medians["ours"],
        "peak_mib": {side: memory[side]["peak_mib"] for side in models},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="median of 5 with a short warm-up")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per model (>= 5)")
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append", help="run only these configs")
    parser.add_argument("--memory", nargs=2, metavar=("SIDE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.memory:
        measure_memory(*args.memory)
        return
    torch.set_num_threads(2)
    reps = max(5, args.reps or (5 if args.quick else 7))
    warmup, steps = (1, 1) if args.quick else (2, 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x{SRC_LEN} src, "
          f"{BATCH}x{TGT_LEN} tgt, vocab {VOCAB}, dropout {DROPOUT}, median of {reps} x {steps} step(s)")
    for name in args.config or list(CONFIGS):
        r = bench(name, reps, warmup, steps)
        print(f"\n{name}  (params ours {r['params']['ours']:,}, stock {r['params']['stock']:,}; "
              f"{r['tokens_per_step']} non-pad tokens/step)")
        for side in ("ours", "stock"):
            print(f"  {side:5s}  {r['tokens_per_s'][side]:9.0f} tok/s  {r['ms_per_step'][side]:8.1f} ms/step  "
                  f"peak +{r['peak_mib'][side]:7.1f} MiB   runs(ms) {r['all_ms'][side]}")
        print(f"  ratio ours/stock (tokens/s): {r['ratio']:.3f}x")
        print(f"  ours achieves {r['achieved_gflop_per_s']:.1f} GFLOP/s; this machine's matmuls at the model's shapes "
              f"{r['matmul_gflop_per_s']:.1f} GFLOP/s (bench/matmul_rate.py); achieved / matmul rate: "
              f"{r['flop_rate_ratio']:.3f}x (per repetition {r['flop_rate_ratios']})")


if __name__ == "__main__":
    main()
