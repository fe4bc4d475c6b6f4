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
from admin_ds.training.engine import clear_skip, cut_learning_rate, local_grad_norm, loss_scale, skip_next_step

__all__ = ["UpdateGuard", "cut_learning_rate"]  # cut_learning_rate: the engine's, named here for the loop

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
            skip_next_step(engine)
        return norm

    def after_step(self, engine, step: int) -> bool:
        """Record update ``step``; True when the run has diverged."""
        if self.skipping:
            clear_skip(engine)
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
