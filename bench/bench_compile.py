"""Training-step time of our model eager vs with every layer compiled (``--compile-layers``, model/compiled.py).

    python -m bench.bench_compile            # 18-6 d=256, median of 7 repetitions x 2 steps per side
    python -m bench.bench_compile --quick    # 2-2 d=32 on an 8 x 12 batch, median of 5 x 1

The model, batch and sizes are bench_model.py's (batch 32 x 32 source and target tokens with some rows
padded, vocabulary 8000, dropout 0.1, attention dropout 0, torch.set_num_threads(2)); the step is the one
``admin-ds train`` runs: forward with the fused label-smoothed loss, backward, gradients cleared. The two
sides are copies of one initialised model, one with ``compile_layers`` applied; they run alternately in
one process (the order flips every repetition) and the medians are reported. The compile time is reported
on its own: the first compiled step (compiling plus one step) minus the compiled side's median step.

Ops per layer: torch.profiler over one forward+backward of the first encoder (and decoder) layer alone,
counting top-level operator calls, i.e. aten ops not called from another aten op, plus inductor's fused
C++ kernels (recorded because ``cpp.enable_kernel_profile`` is set before compiling; with no profiler
active that is one flag check per kernel). On a GPU each of these is about one kernel launch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from admin_ds.model.compiled import compile_layers
from bench import bench_model as bm

CONFIGS = {"18-6 d=256": bm.CONFIGS["18-6 d=256"],
           "2-2 d=32": dict(encoder_layers=2, decoder_layers=2, d_model=32, nhead=4, ffn_dim=64)}
FULL_BATCH, QUICK_BATCH = (bm.BATCH, bm.SRC_LEN, bm.TGT_LEN), (8, 12, 12)  # rows, source and target tokens


def make_pair(shape: dict, count_ops: bool = True) -> dict:
    """{"eager": model, "compiled": its copy with every layer compiled}; ``count_ops`` turns on inductor's
    kernel records that ``ops_per_layer`` counts."""
    inductor_config.cpp.enable_kernel_profile = count_ops
    eager = bm.make_model("ours", shape)
    compiled = copy.deepcopy(eager)
    compile_layers(compiled)
    return {"eager": eager, "compiled": compiled}


def train_step(model, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> None:
    model(src, tgt_in, target=tgt_out, label_smoothing=0.1)[0].backward()
    model.zero_grad(set_to_none=True)


def timed(model, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, *batch)
    return (time.perf_counter() - start) / steps


def _is_op(event) -> bool:
    return event.name.startswith("aten::") or "cpp_fused" in event.name


def top_level_ops(run) -> int:
    """Operator calls of ``run()`` that no other operator call made (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    count = 0
    for event in prof.events():
        if not _is_op(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not _is_op(parent):
            parent = parent.cpu_parent
        count += parent is None
    return count


def ops_per_layer(model, batch) -> dict[str, int]:
    """Top-level ops of one forward+backward of the first encoder layer and of the first decoder layer."""
    src, tgt_in, _ = batch
    d_model = model.cfg.d_model
    mask = src.eq(bm.PAD)
    memory = torch.randn(*src.shape, d_model)
    x_src = torch.randn(*src.shape, d_model, requires_grad=True)
    x_tgt = torch.randn(*tgt_in.shape, d_model, requires_grad=True)

    def layer_step(layer, *inputs) -> None:
        model.zero_grad(set_to_none=True)
        out = layer(*inputs)
        out.backward(torch.ones_like(out))

    encoder, decoder = model.encoder.layers[0], model.decoder.layers[0]
    layer_step(encoder, x_src, mask), layer_step(decoder, x_tgt, memory, mask)  # warm-up (and compile)
    return {"encoder": top_level_ops(lambda: layer_step(encoder, x_src, mask)),
            "decoder": top_level_ops(lambda: layer_step(decoder, x_tgt, memory, mask))}


def bench(name: str, reps: int, steps: int, batch_shape: tuple[int, int, int] = FULL_BATCH) -> dict:
    models = make_pair(CONFIGS[name])
    batch = bm.make_batch(*batch_shape)
    first_compiled = timed(models["compiled"], batch, 1)  # compiles the two layer graphs
    timed(models["eager"], batch, 2), timed(models["compiled"], batch, 1)  # warm-up
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for rep in range(reps):
        order = ("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager")
        for side in order:
            seconds[side].append(timed(models[side], batch, steps))
    medians = {side: statistics.median(s) for side, s in seconds.items()}
    ratios = [e / c for e, c in zip(seconds["eager"], seconds["compiled"])]
    return {"config": name, "seconds": seconds, "medians": medians, "ratio": statistics.median(ratios),
            "ratios": ratios, "compile_s": first_compiled - medians["compiled"],
            "ops": {side: ops_per_layer(model, batch) for side, model in models.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-2 d=32 on an 8 x 12 batch, median of 5 x 1")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per side (>= 5)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    rows, src_len, tgt_len = QUICK_BATCH if args.quick else FULL_BATCH
    name = "2-2 d=32" if args.quick else "18-6 d=256"
    reps = max(5, args.reps or (5 if args.quick else 7))
    steps = 1 if args.quick else 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {name}, batch {rows}x{src_len} src, "
          f"{rows}x{tgt_len} tgt, dropout {bm.DROPOUT}, median of {reps} x {steps} step(s)")
    r = bench(name, reps, steps, (rows, src_len, tgt_len))
    for side in ("eager", "compiled"):
        print(f"  {side:8s} {1000 * r['medians'][side]:8.1f} ms/step   ops per layer fwd+bwd: encoder "
              f"{r['ops'][side]['encoder']}, decoder {r['ops'][side]['decoder']}   runs(ms) "
              f"{[round(1000 * s, 1) for s in r['seconds'][side]]}")
    print(f"  compile time (first compiled step minus a step): {r['compile_s']:.1f} s")
    print(f"  per-repetition ratios: {', '.join(f'{x:.3f}' for x in r['ratios'])}")
    print(f"result: {name} compiled layers vs eager: {r['ratio']:.3f}x step speed (eager / compiled time, "
          f"> 1 = compiled faster), compile {r['compile_s']:.1f} s, ops/layer encoder {r['ops']['eager']['encoder']}"
          f" -> {r['ops']['compiled']['encoder']}, decoder {r['ops']['eager']['decoder']} -> "
          f"{r['ops']['compiled']['decoder']}")


if __name__ == "__main__":
    main()
