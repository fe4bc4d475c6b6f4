"""One training step (forward, loss, backward, optimizer step), the values logged after it, and what the
divergence guard needs from the optimizer. ``train_step`` is the step of ``admin-ds train`` and of every
benchmark that times training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

from admin_ds.data import Batch
from admin_ds.training.engine.internals import (
    current_loss_scale,
    full_numel,
    restore_optimizer_step,
    scale_torch_schedule,
    skip_next_optimizer_step,
)


class StepGuard(Protocol):
    """What ``train_step`` asks at an optimizer update (training/guard.py's ``UpdateGuard``)."""

    def before_step(self, engine) -> Optional[float]: ...

    def after_step(self, engine, step: int) -> bool: ...


@dataclass
class StepResult:
    """One micro-batch's step: summed loss and NLL over its target tokens (on the device, not synced),
    whether it ended an optimizer update, and the gradient norm the guard took there (None elsewhere)."""

    loss_sum: torch.Tensor
    nll_sum: torch.Tensor
    update: bool
    grad_norm: Optional[float] = None


def train_step(engine, batch: Batch, label_smoothing: float, guard: Optional[StepGuard] = None,
               update_number: int = 0) -> StepResult:
    """Forward, loss, backward and DeepSpeed's step for one micro-batch already on the device.

    The loss is the label-smoothed sum over target tokens divided by the batch's token count (what the
    model is trained on); ``src_padded`` comes from the batch, so the forward asks the device nothing.
    ``guard`` (with ``update_number``, the update this step completes) is consulted at an update."""
    loss_sum, nll_sum = engine(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                               label_smoothing=label_smoothing, src_padded=batch.src_padded)
    engine.backward(loss_sum / batch.ntokens)
    # Ask before step(): afterwards DeepSpeed answers for the next micro-batch.
    update = engine.is_gradient_accumulation_boundary()
    grad_norm = guard.before_step(engine) if update and guard is not None else None
    engine.step()
    if update and guard is not None:
        guard.after_step(engine, update_number)
    return StepResult(loss_sum, nll_sum, update, grad_norm)


# --- after a step -------------------------------------------------------------------------------------
def loss_scale(engine) -> Optional[float]:
    """The fp16 loss scale; None without fp16."""
    return current_loss_scale(engine.optimizer) if engine.fp16_enabled() else None


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


def parameter_count(model: torch.nn.Module) -> int:
    """The model's parameter count, also when ZeRO-3 has partitioned it."""
    return sum(full_numel(param) for param in model.parameters())


# --- for the divergence guard -------------------------------------------------------------------------
def skip_next_step(engine) -> None:
    """Make the coming ``engine.step()`` a skipped update, counted and handled as DeepSpeed's own skips."""
    skip_next_optimizer_step(engine.optimizer)


def clear_skip(engine) -> None:
    """Undo ``skip_next_step`` after the step."""
    restore_optimizer_step(engine.optimizer)


def cut_learning_rate(engine, factor: float) -> bool:
    """Scale the schedule's learning rates (torch schedulers: their base rates and the current ones) by
    ``factor``; False when the schedule is DeepSpeed's own, whose rates come from its config."""
    return scale_torch_schedule(engine.lr_scheduler, factor)
