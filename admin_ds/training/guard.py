"""The divergence guard: updates with non-finite loss or gradients are skipped; a run of them is divergence.

Who skips (docs/contracts.md §9): DeepSpeed already skips an update whose global gradient norm is not
finite wherever it keeps the gradients itself (ZeRO 1-3 in every precision, and its fp16 and bf16
optimizers); the norm is all-reduced first, so every rank decides the same. Left is ZeRO-0 in fp32, where
the gradients sit on the parameters after DeepSpeed's all-reduce (equal on every rank): there the guard
takes their norm and, if it is not finite, has the optimizer skip the step as DeepSpeed's would.

What the loop does on divergence (``skip_patience`` skipped updates in a row, or a skip with the fp16
loss scale at its floor) is in loop.py: roll back to ``latest`` with a lower learning rate, or stop.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from admin_ds.training.config import FailureConfig
from admin_ds.training.engine import local_grad_norm, loss_scale

log = logging.getLogger("admin_ds")


class UpdateGuard:
    """Counts skipped updates; call ``before_step`` between backward and step at an accumulation boundary
    and ``after_step`` after it."""

    def __init__(self, cfg: FailureConfig, ds_config: dict):
        self.cfg = cfg
        self.min_loss_scale = float(ds_config.get("fp16", {}).get("min_loss_scale", 1.0))
        self.in_a_row = 0
        self.skipped = 0  # over this process's part of the run
        self.skipping = False  # the guard itself skips the current step (ZeRO-0 in fp32)
        self.diverged = False  # set by after_step, cleared by reset

    def before_step(self, engine) -> Optional[float]:
        """The gradient norm where DeepSpeed keeps none; if it is not finite, the coming step is skipped."""
        norm = local_grad_norm(engine)
        self.skipping = norm is not None and not math.isfinite(norm)
        if self.skipping:
            _skip_next_step(engine.optimizer)
        return norm

    def after_step(self, engine, step: int) -> bool:
        """Record update ``step``; True when the run has diverged."""
        if self.skipping:
            _clear_skip(engine.optimizer)
            self.skipping = False
        if engine.was_step_applied():
            self.in_a_row, self.diverged = 0, False
            return False
        self.in_a_row += 1
        self.skipped += 1
        scale = loss_scale(engine)
        at_floor = scale is not None and scale <= self.min_loss_scale
        if scale is None or at_floor or self.in_a_row > 1:
            # fp16's first skips are the loss scale finding its level: DeepSpeed reports those itself.
            log.warning("update %d skipped: non-finite loss or gradients (%d in a row%s)", step, self.in_a_row,
                        f", loss scale {scale:g}" if scale is not None else "")
        self.diverged = self.in_a_row >= self.cfg.skip_patience or at_floor
        return self.diverged

    def reset(self) -> None:
        self.in_a_row, self.diverged = 0, False


def _skip_next_step(optimizer) -> None:
    """Make the next ``optimizer.step()`` change nothing and report itself skipped the way DeepSpeed's own
    optimizers do (an ``overflow`` flag DeepSpeed reads after the step): DeepSpeed then counts a skipped
    step, leaves the schedule where it is, and clears the gradients, exactly as for an fp16 overflow."""

    def skipped_step(*args, **kwargs) -> None:
        optimizer.overflow = True

    optimizer.step = skipped_step


def _clear_skip(optimizer) -> None:
    """Undo ``_skip_next_step``: the optimizer's own ``step`` again, and no ``overflow`` flag."""
    optimizer.__dict__.pop("step", None)
    optimizer.__dict__.pop("overflow", None)


def cut_learning_rate(engine, factor: float) -> bool:
    """Scale the schedule's learning rates (torch schedulers: their base rates and the current ones) by
    ``factor``; False when the schedule is DeepSpeed's own, whose rates come from its config."""
    schedule = engine.lr_scheduler
    if not hasattr(schedule, "base_lrs"):
        return False
    schedule.base_lrs = [lr * factor for lr in schedule.base_lrs]
    for group in schedule.optimizer.param_groups:
        group["lr"] *= factor
    return True
