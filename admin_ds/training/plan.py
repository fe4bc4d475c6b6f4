"""``admin-ds plan``: bytes per rank of a training setup, before anything is launched.

Model states (parameters, gradients, optimizer states) follow DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs`` and ``estimate_zero3_model_states_mem_needs`` for mixed precision
at ZeRO-2 and ZeRO-3; tests/test_plan.py calls them and compares), split into the three parts the estimators
add up; ZeRO-0, ZeRO-1 and fp32 use the same parts with the copies those stages keep. Activations come from
``admin_ds.model.memory``; model FLOPs from ``admin_ds.model.flops``, the count training's log rows use. No
DeepSpeed here: the arithmetic is plain. docs/plan.md has every formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from admin_ds.errors import UserError
from admin_ds.model import ModelConfig
from admin_ds.model.flops import training_flops
from admin_ds.model.memory import ActivationBytes, ParameterCount, activation_bytes, parameter_count
from admin_ds.options import option

PRECISIONS = ("fp16", "bf16", "fp32")
ZERO_STAGES = (0, 1, 2, 3)
DEVICES = ("cuda", "cpu")
HOST_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default for the host figure
GIB = 1 << 30


@dataclass
class PlanConfig:
    """The parallel setup whose memory is planned (the model comes from --arch and its overrides)."""

    zero: int = option(2, help="ZeRO stage", choices=ZERO_STAGES, type=int)
    world_size: int = option(1, help="data-parallel ranks (GPUs) in all")
    gpus_per_node: Optional[int] = option(None, help="ranks per node, for the host figure (default: the world "
                                                     "size up to 8)")
    precision: str = option("fp16", help="training precision (fp16 / bf16: 16-bit weights with fp32 master "
                                         "weights)", choices=PRECISIONS)
    offload: bool = option(False, help="ZeRO-Offload: optimizer states and fp32 gradients in host memory "
                                       "(ZeRO 1-3)")
    offload_params: bool = option(False, help="ZeRO-3 with --offload: the parameters in host memory too")
    zero_init: bool = option(False, help="ZeRO-3: the model is built partitioned (train --zero-init); changes "
                                         "the host figure")
    max_tokens: int = option(4096, help="tokens per batch and rank, padding included (train's --max-tokens)")
    gpu_memory: Optional[float] = option(None, help="memory of one GPU in GiB: say whether the plan fits",
                                         metavar="GiB")
    device: str = option("cuda", help="where the ranks run: cpu counts what only the CPU path keeps",
                         choices=DEVICES)
    sentence_length: int = option(32, help="positions per sentence and side (ids + EOS) for the FLOP figure: a "
                                           "batch of max_tokens // N sentences of N source and N target "
                                           "positions (32 is a round figure; give your data's mean)")

    def validate(self) -> PlanConfig:
        if self.zero not in ZERO_STAGES:
            raise UserError(f"--zero must be one of 0, 1, 2, 3, got {self.zero}")
        if self.world_size < 1:
            raise UserError(f"--world-size must be positive, got {self.world_size}")
        if self.gpus_per_node is not None and (self.gpus_per_node < 1 or self.world_size % self.gpus_per_node):
            raise UserError(f"--gpus-per-node must be positive and divide --world-size {self.world_size}, "
                            f"got {self.gpus_per_node}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.offload and self.zero == 0:
            raise UserError("--offload needs ZeRO 1, 2 or 3 (--zero)")
        if self.offload_params and not (self.offload and self.zero == 3):
            raise UserError("--offload-params needs --zero 3 and --offload")
        if self.max_tokens < 1:
            raise UserError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.gpu_memory is not None and not self.gpu_memory > 0:
            raise UserError(f"--gpu-memory must be positive, got {self.gpu_memory}")
        if self.sentence_length < 1:
            raise UserError(f"--sentence-length must be positive, got {self.sentence_length}")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        return self

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or min(self.world_size, 8)


@dataclass(frozen=True)
class ModelStates:
    """Bytes per rank on the GPU, and DeepSpeed's host-memory estimate per node."""

    parameters: float
    gradients: float
    optimizer_states: float
    host_per_node: float

    @property
    def gpu_total(self) -> float:
        return self.parameters + self.gradients + self.optimizer_states


def model_states(plan: PlanConfig, count: ParameterCount) -> ModelStates:
    """Parameters: the working copy (16-bit, or fp32); under ZeRO-3 a 1/W partition plus one gathered layer.
    Gradients: the working-precision gradients (full at ZeRO 0-1, partitioned at 2-3) and, beside the mixed-
    precision optimizer, the fp32 gradient partition it steps with. Optimizer states: fp32 master weights
    and Adam's two moments, partitioned from ZeRO-1 on (fp32 at ZeRO-0 updates the weights in place).
    At mixed precision ZeRO-2 and ZeRO-3 these add up to DeepSpeed's 2P + 18P/W and 4L + 18P/W (docs/plan.md)."""
    p, layer, w, stage = count.total, count.largest_layer, plan.world_size, plan.zero
    work = 4 if plan.precision == "fp32" else 2
    if stage == 0:
        master = plan.precision != "fp32"
        return ModelStates(work * p, work * p + (4 * p if master else 0), (12 if master else 8) * p,
                           _host_bytes(plan, count))
    grads_full = work * p if stage == 1 else work * p / w  # working-precision gradients
    # DeepSpeed's ZeRO-3 estimate (18 P / W) has no 16-bit gradient partition beside the fp32 one.
    grads = (grads_full if stage < 3 else 0.0) + 4 * p / w
    optimizer = 12 * p / w
    params = work * p if stage < 3 else work * p / w + work * layer
    if stage == 3:
        grads += work * layer  # the gathered layer's full gradient before its reduce-scatter
    if plan.offload:
        optimizer = 0.0
        grads = grads_full if stage == 1 else (work * layer if stage == 3 else 0.0)
        if plan.offload_params:
            params = work * layer
    return ModelStates(params, grads, optimizer, _host_bytes(plan, count))


def _host_bytes(plan: PlanConfig, count: ParameterCount) -> float:
    """DeepSpeed's cpu_mem of the same estimators (ZeRO 0-2 take the ZeRO-2 one): per node, x1.5."""
    p, layer, w, g = count.total, count.largest_layer, plan.world_size, plan.ranks_per_node
    nodes = w // g
    if plan.zero < 3:
        return p * (max(4 * w, 16) if plan.offload else 4 * g) * HOST_BUFFER_FACTOR
    if not plan.offload:
        return (layer if plan.zero_init else p) * 4 * g * HOST_BUFFER_FACTOR
    per_param = 18 if plan.offload_params else 16
    if plan.zero_init:
        return p * per_param / nodes * HOST_BUFFER_FACTOR
    return p * max(4 * g, per_param / nodes) * HOST_BUFFER_FACTOR


@dataclass(frozen=True)
class BatchFlops:
    """Model FLOPs of one rank's micro-batch of --max-tokens: ``sentences`` rows of ``positions`` source and
    as many target positions each (admin_ds.model.flops, forward + backward)."""

    sentences: int
    positions: int
    flops: float


def batch_flops(model: ModelConfig, setup: PlanConfig) -> BatchFlops:
    positions = min(setup.sentence_length, setup.max_tokens)
    sentences = setup.max_tokens // positions
    return BatchFlops(sentences, positions, training_flops(model, sentences, positions, positions))


@dataclass(frozen=True)
class Plan:
    arch: str
    model: ModelConfig
    setup: PlanConfig
    count: ParameterCount
    states: ModelStates
    activations: ActivationBytes
    batch_flops: BatchFlops

    @property
    def gpu_total(self) -> float:
        return self.states.gpu_total + self.activations.peak

    @property
    def fits(self) -> Optional[bool]:
        return None if self.setup.gpu_memory is None else self.gpu_total <= self.setup.gpu_memory * GIB

    def to_dict(self) -> dict:
        return {"arch": self.arch, "model": self.model.to_dict(), "setup": asdict(self.setup),
                "parameters": asdict(self.count),
                "bytes_per_gpu": {"parameters": self.states.parameters, "gradients": self.states.gradients,
                                  "optimizer_states": self.states.optimizer_states,
                                  "activations": self.activations.peak, "total": self.gpu_total},
                "activations": asdict(self.activations), "host_bytes_per_node": self.states.host_per_node,
                "fits": self.fits, "model_flops_per_batch": asdict(self.batch_flops),
                "largest_fitting_max_tokens": largest_fitting_max_tokens(self.arch, self.model, self.setup)}


def make_plan(arch: str, model: ModelConfig, setup: PlanConfig) -> Plan:
    count = parameter_count(model)
    return Plan(arch, model, setup, count, model_states(setup, count),
                activation_bytes(model, setup.max_tokens, setup.precision, setup.device), batch_flops(model, setup))


# Share of a GPU's memory a planned total may take when a batch size is chosen for it: the plan leaves out
# the CUDA context, communication buckets, allocator fragmentation and the caching allocator's slack.
FIT_FRACTION = 0.65
FIT_STEP, FIT_CAP = 1024, 262144


def largest_fitting_max_tokens(arch: str, model: ModelConfig, setup: PlanConfig,
                               fraction: float = FIT_FRACTION) -> Optional[int]:
    """The largest multiple of 1024 (up to 256k) for --max-tokens whose plan takes at most ``fraction`` of
    --gpu-memory; None without --gpu-memory or when not even 1024 fits. The plan grows with the batch."""
    if setup.gpu_memory is None:
        return None
    budget = fraction * setup.gpu_memory * GIB

    def fits(tokens: int) -> bool:
        return make_plan(arch, model, replace(setup, max_tokens=tokens)).gpu_total <= budget

    if not fits(FIT_STEP):
        return None
    low, high = 1, FIT_CAP // FIT_STEP  # in steps of FIT_STEP; fits(low) holds throughout
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle * FIT_STEP) else (low, middle - 1)
    return low * FIT_STEP


def _size(value: float) -> str:
    return f"{value / GIB:8.2f} GiB" if value >= GIB else f"{value / (1 << 20):8.1f} MiB"


def _what_parameters(s: PlanConfig) -> str:
    if s.offload_params:
        return "in host memory; one gathered layer here"
    return f"{s.precision} working copy" + (" 1/W + one gathered layer" if s.zero == 3 else "")


def _what_gradients(s: PlanConfig) -> str:
    if s.offload:
        return {1: f"{s.precision} gradients (reduced to host memory)", 2: "reduced straight into host memory",
                3: "one gathered layer's; the rest in host memory"}[s.zero]
    if s.zero == 0:
        return f"{s.precision} gradients" + ("" if s.precision == "fp32" else " + fp32 copy")
    if s.zero == 3:
        return "fp32 partition 1/W + one gathered layer's"
    return f"{s.precision} gradients{' 1/W' if s.zero == 2 else ''} + fp32 partition 1/W"


def _what_optimizer(s: PlanConfig) -> str:
    if s.offload:
        return "in host memory"
    if s.zero == 0:
        return "Adam moments (weights updated in place)" if s.precision == "fp32" else \
            "fp32 master weights + Adam moments"
    return "fp32 master weights + Adam moments, 1/W"


def render(plan: Plan) -> str:
    """The table ``admin-ds plan`` prints."""
    m, s, c = plan.model, plan.setup, plan.count
    stage = f"ZeRO-{s.zero}" + (" + offload" if s.offload else "") + (" (params too)" if s.offload_params else "")
    ckpt = f"checkpointing every {m.checkpoint_every} layers" if m.checkpoint_every else "no activation checkpointing"
    act = plan.activations
    rows = [("parameters", plan.states.parameters, _what_parameters(s)),
            ("gradients", plan.states.gradients, _what_gradients(s)),
            ("optimizer states", plan.states.optimizer_states, _what_optimizer(s)),
            ("activations", act.peak, f"peak of one micro-batch: saved {_size(act.saved).strip()}, "
                                      f"loss gradients {_size(act.loss).strip()}")]
    lines = [f"{plan.arch}: {m.encoder_layers}-{m.decoder_layers}, d={m.d_model}, ffn {m.ffn_dim}, "
             f"{m.nhead} heads, vocab {m.tgt_vocab_size}: {c.total / 1e6:.1f}M parameters "
             f"(largest layer {c.largest_layer / 1e6:.1f}M)",
             f"{stage}, {s.precision}, {s.world_size} ranks ({s.ranks_per_node} per node), "
             f"{s.max_tokens} tokens per batch, {ckpt}, {s.device}", "",
             f"  {'per GPU':<18}{'bytes':>12}  what"]
    lines += [f"  {name:<18}{_size(value):>12}  {what}" for name, value, what in rows]
    lines.append(f"  {'total':<18}{_size(plan.gpu_total):>12}")
    lines.append(f"  {'host per node':<18}{_size(plan.states.host_per_node):>12}  DeepSpeed's estimate "
                 f"(x{HOST_BUFFER_FACTOR})")
    work = plan.batch_flops
    lines += ["", f"model FLOPs per batch and rank: {work.flops / 1e12:.4g} TFLOP (forward + backward, "
                  f"{work.sentences} sentences of {work.positions} + {work.positions} positions)"]
    if plan.fits is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines += ["", f"{verdict} in {s.gpu_memory:g} GiB per GPU "
                      f"({plan.gpu_total / (s.gpu_memory * GIB):.0%} used; CUDA context, communication "
                      f"buckets and fragmentation not counted)"]
        largest = largest_fitting_max_tokens(plan.arch, m, s)
        lines.append(f"largest --max-tokens within {FIT_FRACTION:.0%} of it: "
                     + (f"{largest} (the rest is room for what the plan does not count)" if largest else
                        "none, not even 1024 (more ranks, a higher --zero, --offload or checkpointing)"))
    return "\n".join(lines)
