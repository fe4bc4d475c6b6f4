"""Every use of a DeepSpeed or torch internal (private attribute, module-level default, undocumented
entry point), each behind one named function.

Each says what it works around and the versions it was checked on; a DeepSpeed outside the tested range
gets a warning at start-up (``check_deepspeed_version``), since any of these may then have moved. The
rest of the engine package calls DeepSpeed's and torch's public API only.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch

from admin_ds.checkpoints.pickles import DEEPSPEED_GLOBALS, load_weights_only

log = logging.getLogger("admin_ds")

# The DeepSpeed versions the functions below were checked on (setup.py pins the same range).
TESTED_DEEPSPEED = ((0, 19, 8), (0, 20, 0))  # from (inclusive), to (exclusive)
CHECKED_ON = "deepspeed 0.19.8, torch 2.13.0"


# --- the version ----------------------------------------------------------------------------------------
def untested_deepspeed(version: str) -> Optional[str]:
    """A one-line warning when ``version`` is outside ``TESTED_DEEPSPEED``, else None."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])
    low, high = TESTED_DEEPSPEED
    if len(numbers) == 3 and low <= numbers < high:
        return None
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    return (f"DeepSpeed {version} is outside the tested range {tested}: admin-ds relies on some of its "
            f"internals (admin_ds/training/engine/internals.py, checked on {CHECKED_ON}); check resumes "
            "and fp16 runs before trusting them")


def check_deepspeed_version() -> Optional[str]:
    """Warn (never stop) when the installed DeepSpeed is outside the tested range; returns the warning."""
    warning = untested_deepspeed(deepspeed.__version__)
    if warning is not None:
        log.warning(warning)
    return warning


# --- processes ------------------------------------------------------------------------------------------
def skip_shm_comm_build() -> None:
    """Works around the ~25 s JIT compile of DeepSpeed's shared-memory all-reduce on the first CPU
    collective (plain gloo gives the same results) by marking the op incompatible (0.19.8)."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def set_default_group_timeout(timeout: timedelta) -> None:
    """Works around DeepSpeed building its data-parallel and ZeRO groups with ``dist.new_group`` and no
    timeout, which takes c10d's module-level 30-minute default: that default is set instead (torch 2.13)."""
    c10d = importlib.import_module("torch.distributed.distributed_c10d")
    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
        c10d.default_pg_nccl_timeout = timeout


def raised_in_torch_distributed(err: BaseException) -> bool:
    """Works around gloo raising a plain RuntimeError for a dead or hung peer (NCCL raises DistError): the
    innermost frame's file being under torch/distributed/ tells them apart (torch 2.13)."""
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = frame.tb_frame.f_code.co_filename if frame is not None else ""
    return isinstance(err, RuntimeError) and f"{os.sep}torch{os.sep}distributed{os.sep}" in where


# --- config and checkpoints -----------------------------------------------------------------------------
def parse_like_initialize(config: dict) -> None:
    """Works around DeepSpeed having no public config validator: its internal ``DeepSpeedConfig``, the
    parser ``initialize`` uses, is run on ``config`` (which may record the keys read) (0.19.8)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    DeepSpeedConfig(config)


def deepspeed_pickle_classes() -> list:
    """Works around DeepSpeed pickling four of its own classes into optimizer shards: they are imported by
    their internal module paths (``pickles.DEEPSPEED_GLOBALS``) to be allowed by name (0.19.8)."""
    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, attribute = name.rsplit(".", 1)
        found = getattr(importlib.import_module(module), attribute, None)
        if found is not None:  # a class another DeepSpeed version lacks is refused by name when met
            classes.append(found)
    return classes


@contextmanager
def deepspeed_loads_weights_only():
    """Works around DeepSpeed's checkpoint engine, universal loader and ``ds_to_universal`` all calling
    ``torch.load(weights_only=False)`` by name with no hook: inside, ``torch.load`` is the weights-only
    loader with DeepSpeed's own classes allowed, whatever its caller passes (0.19.8, torch 2.13).

    The one weights-only mechanism of a resume: a file naming any other global is refused (UserError)."""
    allowed = deepspeed_pickle_classes()
    real = torch.load

    def load(file, map_location: Any = None, *_args: Any, **_kwargs: Any) -> Any:
        return load_weights_only(file, allowed=allowed, map_location=map_location)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def set_universal_load(engine, universal: bool) -> None:
    """Works around ``load_checkpoint`` having no argument for a universal checkpoint: it reads the flag
    from the engine's private config, and only while loading (0.19.8)."""
    engine._config.load_universal_checkpoint = universal


def run_ds_to_universal(tag_dir: Path, out_dir: Path) -> None:
    """Works around ``ds_to_universal`` being a command-line script: its ``main`` is called with the
    Namespace its parser would build, one worker each, in this process (0.19.8). Prints its progress;
    ``inject_missing_state``: our checkpoints carry no DeepSpeed version key."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(out_dir), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    ds_to_universal.main(args)


# --- master weights -------------------------------------------------------------------------------------
def refresh_master_weights(optimizer) -> bool:
    """Works around DeepSpeed's mixed-precision and ZeRO optimizers keeping fp32 masters that win over an
    edit of ``param.data``: their ``refresh_fp32_params`` copies working weights in (0.19.8). False for a
    plain torch optimizer, whose parameters are the master weights."""
    refresh = getattr(optimizer, "refresh_fp32_params", None)
    if refresh is None:
        return False
    refresh()
    return True


def fp16_master_view(optimizer, param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """Works around ZeRO-0 fp16 optimizers lacking the per-parameter mapping of DeepSpeed's safe getters
    and setters: the master of ``param`` is found in ``fp16_groups`` / ``fp32_groups_flat`` (FP16_Optimizer,
    one flat tensor per group) or ``fp32_groups`` (FP16_UnfusedOptimizer), as a writable view (0.19.8).
    None for any other optimizer."""
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


def full_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    """Works around ZeRO-3 leaving an empty placeholder in ``param.shape``: the full shape is in the
    ``ds_shape`` it attaches to partitioned parameters (0.19.8)."""
    return tuple(param.ds_shape) if hasattr(param, "ds_shape") else tuple(param.shape)


def full_numel(param: torch.nn.Parameter) -> int:
    """Works around ZeRO-3 leaving ``param.numel()`` at 0 after partitioning: the full count is in its
    ``ds_numel`` attribute (0.19.8)."""
    return int(getattr(param, "ds_numel", param.numel()))


# --- steps ----------------------------------------------------------------------------------------------
def current_loss_scale(optimizer) -> Optional[float]:
    """Works around DeepSpeed exposing no public loss-scale getter: fp16 optimizers keep it as ``cur_scale``
    (ZeRO-0, ZeRO-1/2) or ``loss_scale`` (ZeRO-3) (0.19.8)."""
    scale = getattr(optimizer, "cur_scale", None)
    if scale is None:
        scale = getattr(optimizer, "loss_scale", None)
    return float(scale) if scale is not None else None


def skip_next_optimizer_step(optimizer) -> None:
    """Works around DeepSpeed skipping non-finite updates only where it keeps the gradients (not ZeRO-0 in
    fp32): the instance's ``step`` becomes a no-op that sets the ``overflow`` flag DeepSpeed reads after a
    step, so it counts a skip, holds the schedule and clears gradients as for an fp16 overflow (0.19.8)."""

    def skipped_step(*args, **kwargs) -> None:
        optimizer.overflow = True

    optimizer.step = skipped_step


def restore_optimizer_step(optimizer) -> None:
    """Undoes ``skip_next_optimizer_step``: the class's own ``step`` again, and no ``overflow`` flag."""
    optimizer.__dict__.pop("step", None)
    optimizer.__dict__.pop("overflow", None)


def scale_torch_schedule(schedule, factor: float) -> bool:
    """Works around torch schedulers having no public way to rescale: their ``base_lrs`` (what ``get_lr``
    scales) and the optimizer's current rates are multiplied by ``factor`` (torch 2.13). False for a
    schedule without ``base_lrs`` (DeepSpeed's own, whose rates come from its config)."""
    if not hasattr(schedule, "base_lrs"):
        return False
    schedule.base_lrs = [lr * factor for lr in schedule.base_lrs]
    for group in schedule.optimizer.param_groups:
        group["lr"] *= factor
    return True
