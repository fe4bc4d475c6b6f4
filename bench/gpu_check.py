"""GPU check: training speed of 60-12 Admin models through our DeepSpeed engine on one GPU,
against a stock ``nn.Transformer`` of the same shape on the same batches, in the same run.

    python3 -m bench.gpu_check --out DIR [--budget-s 450]     # on a GPU (bench/gpu_check.sh runs it)
    python3 -m bench.gpu_check --out DIR --device cpu --tiny  # every code path on a CPU, tiny shapes

Matrix: 60-12 d=512 (ffn 2048, 8 heads) and d=1024 (ffn 4096, 16 heads), vocabulary 32000, x bf16 / fp16
(ZeRO-2, ds_configs/zero2_*.json, DeepSpeed's FusedAdam) x activation checkpointing off / every layer;
per (shape, precision) one stock row first, then our two rows; the first group adds a row with every layer
compiled (``--compile-layers``, checkpointing off; its compile timed apart). ``--tiny --device cpu``: 4-2 d=32 and d=64,
vocabulary 1000, bf16 / fp32 through ds_configs/cpu_zero2_*.json, a one-rank gloo group.

Batches (bench/gpu/batches.py): WMT-shaped synthetic lengths through our TokenBatchSampler and collate.
max-tokens per shape: the largest multiple of 4096 up to 65,536 whose ``admin-ds plan`` total (ZeRO-2, one
rank, no checkpointing, bf16 and fp16 alike) is at most 65% of the GPU's memory (the plan leaves out the
CUDA context, communication buckets and fragmentation). One set of batches per shape serves every row.

FLOP model (admin_ds/model/flops.py, ``batch_training_flops``, the count training's log rows use too):
matrix products only, 3x the forward (backward = 2x forward), per row of s source and t target non-pad
positions and per layer: encoder 2(4d^2 + 2df) per token + 4 s^2 d; decoder 2(6d^2 + 2df) per token
+ 2 t^2 d + 4 s t d + 4 d^2 per source token; output projection 2 d V per target token. Padding and
checkpointing's recomputation are not counted.

Per row: tokens/s = non-pad source + target tokens of the timed steps / their summed time; MFU = model
FLOPs of the timed steps / their summed time / the GPU's dense bf16/fp16 peak (the table training uses,
admin_ds/training/speed.py; a GPU not in it, or the CPU: the matmul rate measured at the start); peak
memory = torch.cuda.max_memory_allocated (CPU: the process's VmHWM); padding share = pad / all positions of source
and target; host syncs = torch.cuda.set_sync_debug_mode("warn") warnings during one more step.
Prints one JSON line per row as it finishes (also appended to OUT/gpu_check.jsonl), then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from admin_ds.model import build_model, preset_config
from admin_ds.model.compiled import compile_layers
from admin_ds.model.flops import batch_training_flops
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env
from admin_ds.training.schedule import inverse_sqrt_schedule
from admin_ds.training.speed import table_peak_tflops
from bench.gpu import batches as batching
from bench.gpu.measure import host_syncs, matmul_rate, peak_memory_gib, reset_peak
from bench.gpu.report import summary_table, with_stock_ratios
from bench.gpu.stock import StockTrainer

REPO = Path(__file__).resolve().parents[1]

SHAPES = {"60-12 d=512": ("admin-60-12", {}), "60-12 d=1024": ("admin-60-12-big", {})}
TINY = dict(encoder_layers=4, decoder_layers=2, nhead=4, src_vocab_size=1000, tgt_vocab_size=1000)
TINY_SHAPES = {"4-2 d=32": ("admin-tiny", dict(TINY, d_model=32, ffn_dim=128)),
               "4-2 d=64": ("admin-tiny", dict(TINY, d_model=64, ffn_dim=256))}
DS_CONFIGS = {"cuda": {"bf16": "zero2_bf16.json", "fp16": "zero2_fp16.json"},
              "cpu": {"bf16": "cpu_zero2_bf16.json", "fp32": "cpu_zero2_fp32.json"}}
LABEL_SMOOTHING, LR, BATCH_SEED = 0.1, 7e-4, 1


@dataclass
class Run:
    """What every row shares: the device, its peak rate, the time budget and the per-config estimates."""

    args: argparse.Namespace
    device: torch.device
    peak_flops: float
    peak_source: str
    matmul_flops: float
    start: float = field(default_factory=time.perf_counter)
    took: dict = field(default_factory=dict)  # (side, shape, checkpoint_every) -> seconds it took

    def left(self) -> float:
        if self.args.deadline is not None:
            return self.args.deadline - time.time()
        return self.args.budget_s - (time.perf_counter() - self.start)

    def need(self, side: str, shape: str, every: int) -> float:
        same = self.took.get((side, shape, every))
        alike = [s for (sd, _, e), s in self.took.items() if sd == side and e == every]
        return same if same is not None else max(alike, default=self.args.min_config_s)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


@dataclass
class Group:
    """One shape and precision: its batches serve the stock row and both of ours."""

    shape: str
    arch: str
    overrides: dict
    precision: str
    max_tokens: int
    batches: list[batching.TimedBatch]
    label: str = ""

    def model_config(self, every: int = 0):
        return preset_config(self.arch, **self.overrides, checkpoint_every=every)


def timed_steps(run: Run, step: Callable, batches: list, warmup: int, steps: int) -> tuple[list, list]:
    """``warmup`` untimed steps, then ``steps`` timed ones (device synced around each); seconds and losses."""
    losses, seconds = [], []
    for batch in batches[:warmup]:
        step(batch)
    run.sync()
    for batch in batches[warmup: warmup + steps]:
        start = time.perf_counter()
        losses.append(step(batch))
        run.sync()
        seconds.append(time.perf_counter() - start)
    return seconds, [round(float(loss), 4) for loss in losses]


def figures(run: Run, group: Group, every: int, seconds: list) -> dict:
    """The measured columns of one row, from the timed batches and their step times."""
    timed = group.batches[run.args.warmup: run.args.warmup + len(seconds)]
    cfg = group.model_config(every)
    flops = sum(batch_training_flops(cfg, b.src_lengths, b.tgt_lengths) for b in timed)
    total, tokens = sum(seconds), sum(b.tokens for b in timed)
    return {"max_tokens": group.max_tokens, "batch_seed": BATCH_SEED, "pool": run.args.pool,
            "vocab": cfg.tgt_vocab_size, "warmup": run.args.warmup, "steps": len(seconds),
            "batch_shapes": [b.shape for b in timed], "tokens_timed": tokens,
            "padding_share": round(batching.padding_share(timed), 5),
            "step_s_median": round(statistics.median(seconds), 5), "seconds_timed": round(total, 6),
            "tokens_per_s": round(tokens / total, 2),
            "model_flops_timed": flops, "mfu": round(flops / total / run.peak_flops, 6),
            "mfu_vs_matmul": round(flops / total / run.matmul_flops, 6), "peak_flops": run.peak_flops,
            "peak_source": run.peak_source, "peak_mem_GiB": round(peak_memory_gib(run.device), 3),
            "plan_GiB": round(batching.planned_bytes(group.arch, cfg, group.precision, group.max_tokens,
                                                     run.device.type) / batching.GIB, 3)}


def stock_row(run: Run, group: Group) -> dict:
    """The stock model on the group's batches; on running out of memory, again in 2 then 4 micro-batches."""
    micro, failures = run.args.stock_micro_batches, []
    while micro <= 4:
        try:
            return _stock_once(run, group, micro)
        except torch.cuda.OutOfMemoryError as err:
            failures.append(f"{micro} micro-batch(es): {str(err).splitlines()[0][:160]}")
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        micro *= 2
    raise RuntimeError("stock model out of memory: " + "; ".join(failures))


def _stock_once(run: Run, group: Group, micro: int) -> dict:
    torch.manual_seed(0)
    reset_peak(run.device)
    trainer = StockTrainer(group.model_config(), group.precision, run.device, LR, LABEL_SMOOTHING, micro)
    batches = batching.to_device(group.batches, run.device)
    seconds, losses = timed_steps(run, trainer.step, batches, run.args.warmup, run.args.steps)
    row = {"side": "stock", "params_M": round(trainer.parameters() / 1e6, 2), "micro_batches": micro,
           "optimizer": "torch.optim.AdamW(fused=True)", **figures(run, group, 0, seconds),
           "loss_first_last": [losses[0], losses[-1]]}
    row["host_syncs"], row["sync_sites"] = host_syncs(run.device, trainer.step, batches[-1])
    return row


def build_engine(run: Run, group: Group, torch_adam: bool = False):
    """Our engine for the group, built on the device; if DeepSpeed's FusedAdam cannot be built or loaded,
    once more with torch's Adam (``torch_adam``), so that the other figures still come (the row says so)."""
    config = json.loads((REPO / "ds_configs" / DS_CONFIGS[run.device.type][group.precision]).read_text())
    config["optimizer"]["params"].update(lr=LR, **({"torch_adam": True} if torch_adam else {}))
    torch.manual_seed(0)
    with torch.device(run.device) if run.device.type == "cuda" else nullcontext():
        model = build_model(group.arch, **group.overrides)
    try:
        return training_engine.initialize(model, config, None, inverse_sqrt_schedule(4000, LR, 1e-7)), None
    except Exception as err:
        if torch_adam or config["optimizer"]["params"].get("torch_adam"):
            raise
        traceback.print_exc()
        del model
        gc.collect()
        return build_engine(run, group, torch_adam=True)[0], f"{type(err).__name__}: {str(err)[:300]}"


def set_checkpointing(model, every: int) -> None:
    """Turn per-layer activation checkpointing on or off in a built model (read at every forward)."""
    model.encoder.checkpoint_every = model.decoder.checkpoint_every = every
    model.cfg = replace(model.cfg, checkpoint_every=every)


def ours_step(run: Run, engine) -> Callable:
    """The product's training step (``train_step``); returns the loss per target token (a device tensor)."""
    fused = run.device.type == "cuda"

    def step(batch):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]) \
                if fused else nullcontext():  # on a GPU a fallback to the unfused math kernel raises
            result = training_engine.train_step(engine, batch, LABEL_SMOOTHING)
        return result.loss_sum.detach() / batch.ntokens

    return step


def ours_row(run: Run, group: Group, engine, every: int, extra: dict) -> dict:
    set_checkpointing(engine.module, every)
    reset_peak(run.device)
    step, skipped = ours_step(run, engine), int(engine.skipped_steps)
    batches = batching.to_device(group.batches, run.device)
    seconds, losses = timed_steps(run, step, batches, run.args.warmup, run.args.steps)
    row = {"side": "ours", "params_M": round(sum(p.numel() for p in engine.module.parameters()) / 1e6, 2),
           "zero": training_engine.zero_stage_of(engine), "optimizer": type(engine.basic_optimizer).__name__,
           **figures(run, group, every, seconds), "loss_first_last": [losses[0], losses[-1]],
           "skipped_steps": int(engine.skipped_steps) - skipped, "loss_scale": training_engine.loss_scale(engine),
           **extra}
    row["host_syncs"], row["sync_sites"] = host_syncs(run.device, step, batches[-1])
    return row


def compiled_row(run: Run, group: Group, engine) -> dict:
    """Our step with every layer through torch.compile (``--compile-layers``), checkpointing off; the first
    step (the compile) is timed on its own."""
    compile_layers(engine.module, backend=run.args.compile_backend)
    set_checkpointing(engine.module, 0)
    first = group.batches[0].batch.to(run.device)
    start = time.perf_counter()
    ours_step(run, engine)(first)
    run.sync()
    return ours_row(run, group, engine, 0, {"compiled": run.args.compile_backend,
                                            "compile_s": round(time.perf_counter() - start, 1)})


def emit(run: Run, group: Group, row: dict, rows: list) -> None:
    every = row.get("checkpoint_every", 0)
    tail = "" if row.get("side") == "stock" else f" ckpt={'on' if every else 'off'}" + (
        " compiled" if row.get("compiled") else "")
    row = {"config": f"{group.label}{tail}",
           "shape": group.shape, "precision": group.precision, **row}
    row = with_stock_ratios([*rows, row])[-1]
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(Path(run.args.out) / "gpu_check.jsonl", "a") as out:
        out.write(json.dumps(row) + "\n")


def attempt(run: Run, group: Group, side: str, every: int, work: Callable[[], dict], rows: list) -> bool:
    """Run one row within the budget; a failure is a row of its own, and the matrix goes on."""
    need, left = run.need(side, group.shape, every), run.left()
    base = {"side": side, "checkpoint_every": every}
    if left < need:
        emit(run, group, {**base, "skipped": f"time budget: {left:.0f} s left, the row needs ~{need:.0f} s"}, rows)
        return False
    start = time.perf_counter()
    if run.device.type == "cuda":  # alive as the row starts: ~0 but for a leak, or the engine at ckpt=on
        base["allocated_at_start_GiB"] = round(torch.cuda.memory_allocated() / batching.GIB, 3)
    try:
        row = work()
    except Exception as err:  # report and go on: one failure must not hide the other rows
        traceback.print_exc()
        message = str(err).splitlines()[0][:400] if str(err) else ""
        emit(run, group, {**base, "error": f"{type(err).__name__}: {message}"}, rows)
        return False
    finally:
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    run.took[(side, group.shape, every)] = time.perf_counter() - start
    emit(run, group, {**base, **row, "row_s": round(run.took[(side, group.shape, every)], 1)}, rows)
    return True


def run_group(run: Run, group: Group, rows: list, compiled: bool = False) -> None:
    attempt(run, group, "stock", 0, lambda: stock_row(run, group), rows)
    held: dict = {}

    def first() -> dict:
        start = time.perf_counter()
        held["engine"], optimizer_error = build_engine(run, group)
        init_s = time.perf_counter() - start
        start = time.perf_counter()
        first_batch = group.batches[0].batch.to(run.device)
        training_engine.omega_hook(held["engine"], first_batch.src_tokens, first_batch.tgt_input)
        extra = {"init_s": round(init_s, 1), "hook_s": round(time.perf_counter() - start, 2)}
        return ours_row(run, group, held["engine"], 0, {**extra, **({"fused_adam_error": optimizer_error}
                                                                    if optimizer_error else {})})

    try:
        if attempt(run, group, "ours", 0, first, rows) or "engine" in held:
            attempt(run, group, "ours", 1, lambda: ours_row(run, group, held["engine"], 1, {}), rows)
            if compiled:  # last: compiling changes the engine's module for good
                attempt(run, group, "ours-compiled", 0, lambda: compiled_row(run, group, held["engine"]), rows)
    finally:
        if "engine" in held:
            held.pop("engine").destroy()
        gc.collect()  # DeepSpeed's engine holds reference cycles: free its memory before the next group
        if run.device.type == "cuda":
            torch.cuda.empty_cache()


def groups(run: Run) -> list[Group]:
    args = run.args
    shapes = TINY_SHAPES if args.tiny else SHAPES
    precisions = list(DS_CONFIGS[run.device.type])
    memory = (torch.cuda.get_device_properties(run.device).total_memory if run.device.type == "cuda"
              else args.cpu_memory_gib * batching.GIB)
    out = []
    for shape, (arch, overrides) in shapes.items():
        cfg = preset_config(arch, **overrides)
        tokens = args.max_tokens or batching.planned_max_tokens(
            arch, cfg, precisions, memory, args.memory_fraction, args.max_tokens_cap, 64 if args.tiny else 4096,
            run.device.type)
        batches = batching.training_batches(tokens, args.warmup + args.steps + 1, cfg.tgt_vocab_size, BATCH_SEED,
                                            args.pool)
        out += [Group(shape, arch, overrides, p, tokens, batches, f"{shape} {p}") for p in precisions]
    # The goal's group (d=1024 bf16) first; then bf16 before fp16, wide before narrow: a budget cut drops
    # the least wanted rows.
    return sorted(out, key=lambda g: (precisions.index(g.precision), -list(shapes).index(g.shape)))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.jsonl")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (for --device cpu: the test)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip the rows that would start past this")
    parser.add_argument("--deadline", type=float, default=None, help="instead of --budget-s: skip the rows "
                        "that would start past this Unix time (gpu_check.sh counts from its own start)")
    parser.add_argument("--min-config-s", type=float, default=None, help="time a row needs before any was "
                        "measured (default 30 on a GPU, 0 on a CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--memory-fraction", type=float, default=0.65)
    parser.add_argument("--max-tokens-cap", type=int, default=None, help="default 65536 (tiny: 256)")
    parser.add_argument("--max-tokens", type=int, default=None, help="use this instead of the planned one")
    parser.add_argument("--pool", type=int, default=None, help="synthetic pairs (default 1e6; tiny: 20000)")
    parser.add_argument("--stock-micro-batches", type=int, default=1, help="first try (then 2x on OOM, up to 4)")
    parser.add_argument("--cpu-memory-gib", type=float, default=8.0, help="memory the plan fills on a CPU")
    parser.add_argument("--only", nargs="*", default=None, help="run groups whose label holds one of these")
    parser.add_argument("--no-compiled-row", dest="compiled_row", action="store_false",
                        help="skip the first group's extra row with every layer compiled (--compile-layers)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of that row")
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.min_config_s = args.min_config_s if args.min_config_s is not None else (30.0 if args.device == "cuda" else 0)
    args.max_tokens_cap = args.max_tokens_cap or (256 if args.tiny else 65536)
    args.pool = args.pool or (20000 if args.tiny else 1_000_000)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --device cpu --tiny for the code-path check", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    _, _, device = training_engine.init_distributed()
    matmul = matmul_rate(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = (table_peak_tflops(name) or 0.0) * 1e12
    run = Run(args, device, peak or matmul, "datasheet" if peak else "measured matmul", matmul)
    about = json.dumps({"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                        "matmul_tflops": round(matmul / 1e12, 3), "peak_tflops": round(run.peak_flops / 1e12, 3),
                        "peak_source": run.peak_source, "budget_s": args.budget_s})
    print(about, flush=True)
    (Path(args.out) / "device.json").write_text(about + "\n")
    (Path(args.out) / "gpu_check.jsonl").write_text("")  # this run's rows only
    rows: list[dict] = []
    compiled = args.compiled_row  # in the first group that runs (the goal's group)
    for group in groups(run):
        if args.only and not any(part in group.label for part in args.only):
            continue
        run_group(run, group, rows, compiled)
        compiled = False
    print(summary_table(rows), flush=True)
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
