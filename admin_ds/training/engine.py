"""Everything DeepSpeed and torch.distributed: process group, collectives, config, ``initialize``, ω into
partitioned weights, checkpoints.

This is the only module of the package that imports deepspeed or torch.distributed (import-linter holds
it to that for deepspeed; tests/test_architecture.py for both). The model stays a plain ``nn.Module``;
the training loop talks to DeepSpeed and to the other ranks only through the functions here.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from admin_ds.checkpoints.exports import first_line
from admin_ds.checkpoints.pickles import DEEPSPEED_GLOBALS, all_loads_weights_only, load_weights_only
from admin_ds.errors import UserError
from admin_ds.io import read_json_object
from admin_ds.model import OmegaProfile, profile_omega
from admin_ds.training.rendezvous import fill_rendezvous_env
from admin_ds.training.setup import KeysRead


# --- processes ----------------------------------------------------------------------------------------
def init_distributed(timeout_minutes: Optional[float] = None) -> tuple[int, int, torch.device]:
    """Join (or create) the process group; returns (rank, world_size, device).

    ``timeout_minutes`` bounds every collective: a rank whose partner died stops with the process group's
    timeout error instead of waiting forever (torch's default is 30 minutes)."""
    fill_rendezvous_env()
    # NCCL: abort the communicator on a failed or timed-out collective, so the process exits with it
    # (torch's default since 2.2; set for older versions and launchers that reset the environment).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        # The shared-memory all-reduce op costs a ~25 s compile on first use and plain gloo gives
        # identical results (docs/deepspeed.md); CPU runs are tests and demos, so skip it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        extra = {}
        if timeout_minutes is not None:
            extra["timeout"] = _default_group_timeout(timedelta(minutes=timeout_minutes))
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), **extra)
    local_rank = int(os.environ["LOCAL_RANK"])
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
        device = torch.device(accelerator.device_name(local_rank))
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _default_group_timeout(timeout: timedelta) -> timedelta:
    """Make ``timeout`` the default of every process group, not only of the world group: DeepSpeed builds
    its own (data parallel, ZeRO) with ``dist.new_group``, which takes torch's module-level default of 30
    minutes, so a hung peer would hold a ZeRO all-reduce that long (tests/test_rank_death.py)."""
    c10d = importlib.import_module("torch.distributed.distributed_c10d")
    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
        c10d.default_pg_nccl_timeout = timeout
    return timeout


def finish_distributed(peers_alive: bool = True) -> None:
    """Barrier then destroy: without it two-rank runs sometimes abort at exit after finishing. After a
    collective failed (``peers_alive=False``) there is no one to meet at a barrier: destroy only."""
    if dist.is_initialized():
        if peers_alive:
            dist.barrier()
        dist.destroy_process_group()


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` came out of torch.distributed: a peer died, hangs past the timeout, or the network
    failed. NCCL raises DistError; gloo a plain RuntimeError, told apart by where it was raised."""
    if isinstance(err, dist.DistError):
        return True
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = frame.tb_frame.f_code.co_filename if frame is not None else ""
    return isinstance(err, RuntimeError) and f"{os.sep}torch{os.sep}distributed{os.sep}" in where


def add_deepspeed_arguments(parser) -> None:
    """DeepSpeed's own flags (--deepspeed, --deepspeed_config) plus the launcher's --local_rank."""
    deepspeed.add_config_arguments(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="set by the deepspeed launcher; read from LOCAL_RANK otherwise")


# --- collectives --------------------------------------------------------------------------------------
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The element-wise sum over ranks of a small float tensor, as a new float64 tensor on the CPU.

    gloo (CPU) reduces float64; NCCL reduces on the device, where float32 is the portable choice."""
    if world_size() == 1:
        return values.detach().to("cpu", torch.float64, copy=True)
    reduced = values.detach().to(device, torch.float64 if device.type == "cpu" else torch.float32, copy=True)
    dist.all_reduce(reduced)
    return reduced.to("cpu", torch.float64)


def broadcast_from_rank0(values: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``values`` on every rank (in place; returned for convenience)."""
    if world_size() > 1:
        dist.broadcast(values, src=0)
    return values


# --- config -------------------------------------------------------------------------------------------
def read_ds_config(path: Optional[str]) -> dict:
    """Load a DeepSpeed JSON config; one-line errors for a missing or malformed file."""
    if path is None:
        return {}
    return read_json_object(Path(path), "DeepSpeed config")


def check_ds_config(config: dict) -> None:
    """Refuse, in one line, a DeepSpeed config that DeepSpeed would reject with a traceback, or that holds a
    top-level key DeepSpeed never reads (a misspelt ``zero_optimization`` would silently mean ZeRO-0).

    DeepSpeed's own parser is the judge: the config is parsed as ``deepspeed.initialize`` will parse it,
    and the keys it looked up are, by definition, the ones this DeepSpeed version knows."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    seen = KeysRead(config)
    try:
        DeepSpeedConfig(seen)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"DeepSpeed config: {err.title}.{where}: {first['msg']} "
                        f"(got {first.get('input')!r})") from None
    except Exception as err:  # DeepSpeed's own asserts and errors about values
        raise UserError(f"DeepSpeed config: {first_line(err)}") from None
    unknown = sorted(set(config) - seen.read)
    if unknown:
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(seen.read), n=1)
            named.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"DeepSpeed config: unknown key {', '.join(named)}; DeepSpeed {deepspeed.__version__} "
                        "would ignore it")


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def precision(config: dict) -> str:
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp32"


def model_init_context(config: dict, enabled: bool):
    """``deepspeed.zero.Init`` (parameters partitioned as they are created) for ZeRO-3 when asked."""
    if enabled and zero_stage(config) == 3:
        return deepspeed.zero.Init(config_dict_or_path=config)
    if enabled:
        raise UserError("--zero-init needs ZeRO stage 3 in the DeepSpeed config")
    return nullcontext()


def initialize(model: torch.nn.Module, config: dict, optimizer=None, lr_scheduler=None):
    """``deepspeed.initialize`` with our client optimizer/scheduler (either may be None: config wins)."""
    if optimizer is not None and zero_stage(config) > 0:
        # torch.optim optimizers other than Adam(W) are fine under ZeRO but DeepSpeed asks for consent.
        config.setdefault("zero_allow_untested_optimizer", True)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()],
                                           optimizer=optimizer, lr_scheduler=lr_scheduler, config=config)
    _load_weights_only(engine)
    return engine


def _load_weights_only(engine) -> None:
    """DeepSpeed's checkpoint engine unpickles with ``weights_only=False``: a crafted checkpoint would run
    code on resume. Its ``load`` is replaced by the weights-only one, allowing DeepSpeed's own objects."""
    allowed = _deepspeed_classes()

    def load(path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, allowed=allowed, map_location=map_location)

    engine.checkpoint_engine.load = load


def _deepspeed_classes() -> list:
    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, attribute = name.rsplit(".", 1)
        found = getattr(importlib.import_module(module), attribute, None)
        if found is not None:  # a class another DeepSpeed version lacks is refused by name when met
            classes.append(found)
    return classes


# --- Admin's ω into the weights DeepSpeed owns ---------------------------------------------------------
def set_parameters(engine, values: list[tuple[torch.nn.Parameter, float]]) -> None:
    """Fill each parameter with a constant on every rank, so that the next step starts from it.

    Editing ``param.data`` after initialize is not enough (docs/deepspeed.md): the optimizer's fp32
    master copy wins at the next step. So: write the working copy (gathered and re-partitioned from rank 0
    under ZeRO-3), then have the optimizer copy working weights into its master weights. Before the first
    step the working and master copies are equal elsewhere, so this refresh changes nothing else.
    The bf16/fp16 refresh rounds, so the master copies of the edited parameters are then set exactly
    through DeepSpeed's safe setter. Every rank must call this.
    """
    params = [param for param, _ in values]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        with torch.no_grad():
            for param, value in values:
                param.fill_(value)
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if refresh is None:
        return  # a plain torch optimizer: the parameters are the master weights
    refresh()
    # The refresh copied bf16/fp16-rounded values; give the master copies of the edited parameters the
    # exact fp32 ones.
    from deepspeed.utils import safe_set_full_fp32_param

    device = get_accelerator().current_device_name()
    for param, value in values:
        master = _fp16_master(engine.optimizer, param)
        if master is not None:
            master.fill_(value)
            continue
        shape = tuple(param.ds_shape) if hasattr(param, "ds_shape") else tuple(param.shape)
        safe_set_full_fp32_param(param, torch.full(shape, value, dtype=torch.float32, device=device))


def _fp16_master(optimizer, param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """The fp32 master of ``param`` under a ZeRO-0 fp16 optimizer, as a view that can be written.

    These keep masters without the per-parameter mapping DeepSpeed's safe getters and setters use: one
    flat tensor per group (FP16_Optimizer, with FusedAdam) or one tensor per parameter
    (FP16_UnfusedOptimizer). Returns None for any other optimizer."""
    groups = getattr(optimizer, "fp16_groups", None)
    masters = getattr(optimizer, "fp32_groups_flat", None) or getattr(optimizer, "fp32_groups", None)
    if groups is None or masters is None:
        return None
    for group, master in zip(groups, masters):
        offset = 0
        for index, member in enumerate(group):
            if member is param:
                if isinstance(master, torch.Tensor):
                    return master.data[offset: offset + member.numel()].view_as(member)
                return master[index].data
            offset += member.numel()
    return None


def full_parameter(engine, param: torch.nn.Parameter) -> torch.Tensor:
    """The fp32 master value of a parameter on every rank (the weight itself where there is no master)."""
    from deepspeed.utils import safe_get_full_fp32_param

    value = _fp16_master(engine.optimizer, param)
    if value is None:
        value = safe_get_full_fp32_param(param)
    if value is None:
        value = param.detach()
    return value.detach().float().cpu().clone()


def gathered_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full model state dict (working precision -> fp32) on every rank; gathers ZeRO-3 partitions."""
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {name: tensor.detach().float().cpu().clone() for name, tensor in module.state_dict().items()}


# --- checkpoints --------------------------------------------------------------------------------------
def loss_scale(engine) -> Optional[float]:
    if not engine.fp16_enabled():
        return None
    scale = getattr(engine.optimizer, "cur_scale", None)
    if scale is None:
        scale = getattr(engine.optimizer, "loss_scale", None)
    return float(scale) if scale is not None else None


def save_checkpoint(engine, save_dir: str | os.PathLike, tag: str, client_state: dict) -> None:
    """DeepSpeed's collective save (model, optimizer, scheduler, loss scaler) plus our ``client_state``.
    ``latest`` is left alone: training/saving.py publishes the tag once every rank's files are checked."""
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)


def zero_stage_of(engine) -> int:
    return int(engine.zero_optimization_stage())


def load_checkpoint(engine, save_dir: str | os.PathLike, tag: Optional[str] = None,
                    universal: bool = False) -> Optional[dict]:
    """Load ``tag`` (default: the one named in ``latest``); returns our client_state, or None. ``universal``:
    a universal checkpoint (``convert_to_universal``), written on any number of ranks. Every file DeepSpeed
    reads is read weights-only, also by its universal loaders, which pass weights_only=False themselves."""
    engine._config.load_universal_checkpoint = universal  # DeepSpeed reads it only while loading
    with all_loads_weights_only(_deepspeed_classes()):
        path, client_state = engine.load_checkpoint(str(save_dir), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    if path is None:
        return None
    return client_state


def convert_to_universal(tag_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's ``ds_to_universal`` of one ZeRO checkpoint, in this process, every file it reads weights-only."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(out_dir), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with all_loads_weights_only(_deepspeed_classes()):
        ds_to_universal.main(args)  # prints its progress; inject_missing_state: we save no version key


def local_grad_norm(engine) -> Optional[float]:
    """The gradient norm where DeepSpeed keeps none (ZeRO-0 in fp32: gradients live on the parameters).
    Call between backward and step. Elsewhere returns None and ``get_global_grad_norm`` has it."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def engine_step_info(engine, grad_norm: Optional[float] = None) -> dict[str, Any]:
    """Values to log after an optimizer step (``grad_norm`` from ``local_grad_norm`` where needed)."""
    info: dict[str, Any] = {"lr": engine.get_lr()[0]}
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None:
        info["grad_norm"] = float(grad_norm)
    scale = loss_scale(engine)
    if scale is not None:
        info["loss_scale"] = scale
    info["skipped_steps"] = int(getattr(engine, "skipped_steps", 0))
    return info


def omega_hook(engine, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor, dropout: bool = True,
               profile: Optional[OmegaProfile] = None) -> OmegaProfile:
    """Admin's rank-0 hook, run after ``initialize`` and before the first optimizer step.

    Every rank runs the profiling forward through the engine (under ZeRO-3 a forward is a collective, so
    rank 0 alone would hang), rank 0's ω is broadcast so every rank has bit-identical values, and ω is
    written into working and master weights on every rank. With ``profile`` given (a profile file or a
    closed form), profiling is skipped and its values are written instead. Returns ω as read back from the weights.
    """
    if profile is None:
        profile = profile_omega(engine.module, src_tokens, tgt_tokens, dropout=dropout, forward=engine)
        values = broadcast_from_rank0(profile.to_tensor().to(src_tokens.device))
        profile = OmegaProfile.from_tensor(values, len(profile.encoder))
    set_parameters(engine, list(profile.targets(engine.module)))
    return omega_profile(engine)


def omega_profile(engine) -> OmegaProfile:
    """ω as the weights hold it now (their fp32 masters where there are some), on every rank.

    ω lives in the weights only; profiles written into checkpoints and run directories are read back from
    them here. Under ZeRO-3 a rank holds only a shard of each ω, so the whole vector is gathered first
    (every rank must call this)."""
    return OmegaProfile.from_model(engine.module, read=lambda param: full_parameter(engine, param))
