"""fairseq's inverse square-root schedule as a torch LambdaLR.

    lr(step) = init + step * (peak - init) / warmup          for step < warmup
    lr(step) = peak * sqrt(warmup / step)                     afterwards
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def inverse_sqrt_factor(step: int, warmup_updates: int, peak_lr: float, warmup_init_lr: float) -> float:
    """lr(step) / peak_lr, the multiplier LambdaLR applies to the optimizer's base lr (= peak)."""
    if warmup_updates > 0 and step < warmup_updates:
        return (warmup_init_lr + step * (peak_lr - warmup_init_lr) / warmup_updates) / peak_lr
    return math.sqrt(max(warmup_updates, 1) / max(step, 1))


def inverse_sqrt_schedule(warmup_updates: int, peak_lr: float, warmup_init_lr: float):
    """A callable DeepSpeed gives its optimizer to (config-built optimizers exist only inside initialize)."""

    def build(optimizer: torch.optim.Optimizer) -> LambdaLR:
        for group in optimizer.param_groups:
            # A group's "lr_scale" (ω's group under --omega-lr-scale) keeps its rate that multiple of the rest.
            group["lr"] = peak_lr * group.get("lr_scale", 1.0)
            group["initial_lr"] = group["lr"]
        return LambdaLR(optimizer, lambda step: inverse_sqrt_factor(step, warmup_updates, peak_lr, warmup_init_lr))

    return build
