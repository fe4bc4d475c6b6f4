"""Where a training step's time goes: torch.profiler over a few real DeepSpeed steps, grouped by kind.

    python -m bench.profile_step                                  # admin-6-6 shape at d=256, CPU ZeRO-2 bf16
    python -m bench.profile_step --arch admin-60-12 --d-model 128 --ffn-dim 512 --batch 32x32
    python -m bench.profile_step --ds-config ds_configs/zero2_bf16.json --arch admin-60-12 --batch 128x64  # GPU

One rank, the real engine (``admin_ds.training.engine.initialize``), a random batch with padding, the
fused loss; each step is forward, backward and ``engine.step()``. After ``--warmup`` steps, ``--steps``
steps run under the profiler and every op's own time (not its children's) is charged to one kind:

    matmul            GEMMs of the model (aten::mm/addmm/bmm/...), forward and backward
    attention         SDPA kernels (flash / memory-efficient / math)
    norm              LayerNorm forward and backward
    elementwise       the model's other ops: dropout, ReLU, adds, casts, copies, the loss's softmax, ...
    host reads        ops that hand a value to the host (item, nonzero, ...): a GPU must drain for each
    DeepSpeed         ops DeepSpeed runs itself: gradient hooks, bucket copies, flattening, norms, scaling
    communication     collectives (gloo on CPU, NCCL on GPU)
    optimizer         the optimizer's own ops (torch Adam / FusedAdam)
    autograd engine   the backward engine's own time between ops
    Python            time inside the step but in no op: Python, module calls, DeepSpeed's bookkeeping

Ops are charged by who called them: every method of DeepSpeed's optimizer wrapper and the inner
optimizer's ``step`` run inside a labelled profiler range (an op DeepSpeed's ``reduce_ipg_grads`` calls is
DeepSpeed's even though it runs inside backward; torch.profiler's own Python stacks would cost more than
the step). Kernel launches per layer:
one encoder layer and one decoder layer of the model are profiled alone (forward + backward at the
batch's shape) and their kernels counted: on a GPU the CUDA kernels, on a CPU the leaf aten ops that
compute (views and allocations excluded), which is what each would launch. Prints a table; with
``--out`` writes profile_step.json (and ``--trace`` a Chrome trace).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from admin_ds.data import Batch
from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env
from admin_ds.training.schedule import inverse_sqrt_schedule
from bench.host_reads import HOST_READ_OPS
from bench.tensor_batch import tensor_batch

REPO = Path(__file__).resolve().parents[1]
STEP = "admin_ds::step"
OPTIMIZER_RANGE = "optimizer::step"
DEEPSPEED_RANGE = "deepspeed::"
KINDS = ("matmul", "attention", "norm", "elementwise", "host reads", "DeepSpeed", "communication", "optimizer",
         "autograd engine", "Python")
# is_nonzero (bool(t)) ends in _local_scalar_dense, which is counted: counting both would count it twice.
COUNTED_READS = HOST_READ_OPS - {"is_nonzero"}
MATMUL = ("mm", "addmm", "bmm", "baddbmm", "_addmm_activation", "addmv", "mv", "dot", "linear", "matmul")
# Leaf ops that launch no kernel: views, metadata, allocation.
NO_KERNEL = frozenset({"view", "_unsafe_view", "as_strided", "reshape", "_reshape_alias", "transpose", "t", "permute",
                       "expand", "unsqueeze", "squeeze", "select", "slice", "split", "split_with_sizes", "chunk",
                       "narrow", "alias", "detach", "detach_", "empty", "empty_like", "empty_strided", "resize_",
                       "unbind", "lift_fresh", "set_", "is_nonzero", "result_type", "size", "stride", "numel",
                       "_has_compatible_shallow_copy_type", "requires_grad_", "contiguous", "to", "_to_copy",
                       "expand_as", "view_as", "flatten", "unflatten", "movedim", "diagonal", "zeros_like",
                       "resolve_conj", "resolve_neg", "scalar_tensor", "new_empty", "new_empty_strided"})


def op_name(event) -> str:
    return event.name.split("::", 1)[-1]


def kind_of(event) -> str:
    """The kind (see the module docstring) an op's own time is charged to."""
    name = event.name
    if name.startswith(("autograd::engine", "torch::autograd::")) or name.endswith(("Backward0", "Backward1")):
        return "autograd engine"  # the backward engine's node ranges: their own time is the engine's
    if name.startswith(("gloo:", "nccl:", "c10d::", "record_param_comms")) or any(
            word in name for word in ("all_reduce", "allreduce", "broadcast", "reduce_scatter", "allgather",
                                      "all_gather")):
        return "communication"
    if op_name(event) in HOST_READ_OPS or name in ("aten::item", "cudaStreamSynchronize", "cudaDeviceSynchronize"):
        return "host reads"
    owner = labelled_owner(event)
    if owner:
        return owner
    base = op_name(event)
    if base in MATMUL:
        return "matmul"
    if "attention" in base:
        return "attention"
    if "layer_norm" in base:
        return "norm"
    return "elementwise"


def labelled_owner(event) -> str:
    """'optimizer' or 'DeepSpeed' when the innermost labelled range around the op is one that
    ``label_owners`` put there, else ''."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == OPTIMIZER_RANGE:
            return "optimizer"
        if parent.name.startswith(DEEPSPEED_RANGE):
            return "DeepSpeed"
        parent = parent.cpu_parent
    return ""


def label_owners(engine) -> None:
    """Put a profiler range around every method of DeepSpeed's optimizer wrapper (gradient hooks, bucket
    copies, reductions, overflow checks, norms, the step) and around the inner optimizer's ``step``, so each
    op can be charged to whoever called it."""
    inner = getattr(engine.optimizer, "optimizer", None)
    wrapper = engine.optimizer if inner is not None else None
    optimizer = inner if inner is not None else engine.optimizer
    optimizer.step = _in_range(OPTIMIZER_RANGE, optimizer.step)
    targets = [(engine, name) for name in ("allreduce_gradients", "_take_model_step", "clip_fp32_gradients")]
    if wrapper is not None:
        targets += [(wrapper, name) for name, value in vars(type(wrapper)).items()
                    if callable(value) and not name.startswith("__")]
    for owner, name in targets:
        method = getattr(owner, name, None)
        if callable(method) and not isinstance(method, type):
            setattr(owner, name, _in_range(f"{DEEPSPEED_RANGE}{name}", method))


def _in_range(label: str, method):
    def run(*args, **kwargs):
        with record_function(label):
            return method(*args, **kwargs)

    return run


def charge(events, steps: int) -> tuple[dict[str, float], Counter, float]:
    """(ms per step by kind, top ops by own time in ms per step, wall ms per step) of a profile."""
    per_kind = dict.fromkeys(KINDS, 0.0)
    per_op: Counter = Counter()
    wall = 0.0
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        own = event.self_cpu_time_total / 1000 / steps
        if event.name == STEP:
            wall += event.cpu_time_total / 1000 / steps
            per_kind["Python"] += own
            continue
        if event.name == OPTIMIZER_RANGE or event.name.startswith(DEEPSPEED_RANGE):
            per_kind["optimizer" if event.name == OPTIMIZER_RANGE else "DeepSpeed"] += own  # their Python
            continue
        kind = kind_of(event)
        per_kind[kind] += own
        if event.name.startswith("aten::"):
            per_op[f"{event.name} [{kind}]"] += own
    return per_kind, per_op, wall


def kernels_per_layer(layer: torch.nn.Module, x: torch.Tensor, *args) -> int:
    """Kernels one forward + backward of ``layer`` launches: CUDA kernels on a GPU, computing leaf aten ops
    on a CPU."""
    x = x.detach().requires_grad_()
    on_gpu = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        layer(x, *args).float().sum().backward()
    if on_gpu:
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in prof.events() if launches_kernel(e))


def launches_kernel(event) -> bool:
    """A CPU op that computes and calls no other such op (aten::mm computes though it calls resolve_conj)."""
    return (event.name.startswith("aten::") and op_name(event) not in NO_KERNEL
            and not any(launches_kernel(child) for child in event.cpu_children))


def random_batch(batch: int, length: int, vocab: int, device: torch.device, seed: int = 0):
    """src [B, S], tgt_in [B, T], tgt_out [B, T] with lengths from length/2 to length (right-padded)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (batch, length), generator=gen)
    tgt = torch.randint(4, vocab, (batch, length + 1), generator=gen)
    for tokens, lengths in ((src, torch.randint(length // 2, length + 1, (batch,), generator=gen)),
                            (tgt, torch.randint(length // 2, length + 2, (batch,), generator=gen))):
        tokens[torch.arange(tokens.size(1))[None, :] >= lengths[:, None]] = 0
    tgt[:, 0] = 2
    return src.to(device), tgt[:, :-1].contiguous().to(device), tgt[:, 1:].contiguous().to(device)


def build(args, device):
    config = json.loads(Path(args.ds_config).read_text())
    overrides = {key: value for key, value in (("d_model", args.d_model), ("ffn_dim", args.ffn_dim),
                                                ("nhead", args.heads)) if value}
    if args.layers:
        overrides.update(encoder_layers=args.layers[0], decoder_layers=args.layers[1])
    torch.manual_seed(0)
    model = build_model(args.arch, src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, dropout=0.1,
                        checkpoint_every=args.checkpoint_every, **overrides)
    return training_engine.initialize(model, config, None, inverse_sqrt_schedule(100, 5e-4, 1e-7))


def step(engine, batch: Batch) -> None:
    """The product's training step (``train_step``), in one labelled profiler range."""
    with record_function(STEP):
        training_engine.train_step(engine, batch, label_smoothing=0.1)


def measure(args) -> dict:
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    _, _, device = training_engine.init_distributed()
    engine = build(args, device)
    label_owners(engine)
    rows, length = (int(n) for n in args.batch.split("x"))
    src, tgt_in, tgt_out = random_batch(rows, length, args.vocab, device)
    batch = tensor_batch(src, tgt_in, tgt_out)  # token count and src_padded read once, outside the steps
    src_padded = batch.src_padded
    for _ in range(args.warmup):
        step(engine, batch)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step(engine, batch)
        if on_gpu:
            torch.cuda.synchronize()
    elapsed_ms = (time.perf_counter() - start) * 1000 / args.steps
    per_kind, per_op, wall = charge(prof.events(), args.steps)
    model = engine.module
    memory = model.encode(src, src_padded=src_padded)
    layer_dtype = next(p for p in model.parameters()).dtype
    x = model.src_embed(src).to(layer_dtype)
    y = model.tgt_embed(tgt_in).to(layer_dtype)
    result = {
        "config": {"arch": args.arch, "cfg": model.cfg.to_dict(), "batch": args.batch, "ds_config": args.ds_config,
                   "device": str(device), "threads": torch.get_num_threads(), "steps": args.steps},
        "step_ms": round(wall, 2), "wall_ms_per_step_with_profiler": round(elapsed_ms, 2),
        "ms_by_kind": {kind: round(ms, 3) for kind, ms in per_kind.items()},
        "share_by_kind": {kind: round(ms / wall, 4) if wall else 0.0 for kind, ms in per_kind.items()},
        "top_ops_ms": {name: round(ms, 3) for name, ms in per_op.most_common(15)},
        "host_reads_per_step": sum(op_name(e) in COUNTED_READS for e in prof.events()) / args.steps,
        "kernels_per_encoder_layer": kernels_per_layer(model.encoder.layers[0], x, memory.attention_mask),
        "kernels_per_decoder_layer": kernels_per_layer(
            model.decoder.layers[0], y, memory.memory.detach().to(layer_dtype), memory.attention_mask),
    }
    if on_gpu:
        busy = sum(e.self_device_time_total for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA) / 1000 / args.steps
        result["gpu_busy_ms"], result["gpu_idle_share"] = round(busy, 2), round(1 - busy / wall, 4)
    if args.out and args.trace:
        prof.export_chrome_trace(str(Path(args.out) / "trace.json"))
    engine.destroy()
    return result


def report(result: dict) -> None:
    cfg = result["config"]
    print(f"{cfg['arch']} {cfg['cfg']['encoder_layers']}-{cfg['cfg']['decoder_layers']} "
          f"d={cfg['cfg']['d_model']}, batch {cfg['batch']}, {Path(cfg['ds_config']).name}, {cfg['device']}, "
          f"{cfg['threads']} threads: {result['step_ms']:.1f} ms per step (profiled)")
    for kind in KINDS:
        print(f"  {kind:16s} {result['ms_by_kind'][kind]:9.2f} ms  {100 * result['share_by_kind'][kind]:5.1f} %")
    print(f"  host reads per step: {result['host_reads_per_step']:g}; kernels per layer (fwd+bwd): encoder "
          f"{result['kernels_per_encoder_layer']}, decoder {result['kernels_per_decoder_layer']}")
    print("  top ops by own time (ms per step):")
    for name, ms in result["top_ops_ms"].items():
        print(f"    {ms:9.2f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="admin-6-6", help="model preset")
    parser.add_argument("--layers", type=int, nargs=2, metavar=("ENC", "DEC"), help="override the layer counts")
    parser.add_argument("--d-model", type=int, default=256, help="override d_model (0: the preset's)")
    parser.add_argument("--ffn-dim", type=int, default=1024, help="override ffn_dim (0: the preset's)")
    parser.add_argument("--heads", type=int, default=4, help="override nhead (0: the preset's)")
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary size")
    parser.add_argument("--batch", default="32x32", help="sentences x max length (lengths vary from half of it)")
    parser.add_argument("--ds-config", default=str(REPO / "ds_configs" / "cpu_zero2_bf16.json"))
    parser.add_argument("--checkpoint-every", type=int, default=0, help="activation checkpointing every k layers")
    parser.add_argument("--warmup", type=int, default=2, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", help="folder for profile_step.json (and trace.json)")
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args)
    report(result)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile_step.json").write_text(json.dumps(result, indent=1) + "\n")
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
