"""Residual schemes: every sublayer is ``Residual(x, f)``; the scheme only changes its coefficients.

    admin    x_i = LN(ω_i ⊙ x_{i-1} + Dropout(f_i(x_{i-1})))   ω_i a trainable [d_model] vector (Liu et al. 2020)
    post-ln  x_i = LN(x_{i-1} + Dropout(f_i(x_{i-1})))          the same with ω_i = 1
    deepnorm x_i = LN(α x_{i-1} + Dropout(f_i(x_{i-1})))         α constant (Wang et al. 2022)
    pre-ln   x_i = x_{i-1} + Dropout(f_i(LN(x_{i-1})))          plus a final LayerNorm per stack
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from admin_ds.model.dropout import Dropout


class LayerNorm(nn.LayerNorm):
    """LayerNorm that normalises fp16 inputs in fp32: the variance of a shortcut scaled by ω (up to ~10
    at 100 layers) is summed over D features, which fp16's 65504 ceiling and 10-bit mantissa handle badly.
    Other dtypes take the plain path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float16:
            return super().forward(x)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def deepnorm_coefficients(encoder_layers: int, decoder_layers: int) -> dict[str, tuple[float, float]]:
    """DeepNorm's (α, β) for an N-encoder / M-decoder model: α scales shortcuts, β is the init gain."""
    n, m = encoder_layers, decoder_layers
    return {
        "encoder": (0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)),
        "decoder": ((3 * m) ** 0.25, (12 * m) ** -0.25),
    }


def scheme_coefficients(scheme: str, encoder_layers: int, decoder_layers: int, stack: str) -> tuple[float, float]:
    """(shortcut α, init gain β) a stack ("encoder" or "decoder") uses under a scheme."""
    if scheme == "deepnorm":
        return deepnorm_coefficients(encoder_layers, decoder_layers)[stack]
    return 1.0, 1.0


class Residual(nn.Module):
    """One residual connection with its LayerNorm and, for Admin, its shortcut scale ω.

    Args:
        d_model: feature size D.
        scheme: "admin", "post-ln", "pre-ln" or "deepnorm".
        alpha: constant shortcut scale (DeepNorm's α; 1 otherwise).
        dropout: dropout on the branch output.
        eps: LayerNorm epsilon.

    Shape: x [batch, time, D] -> [batch, time, D].
    """

    def __init__(self, d_model: int, scheme: str, alpha: float, dropout: float, eps: float):
        super().__init__()
        self.pre_norm = scheme == "pre-ln"
        self.alpha = alpha
        self.norm = LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)
        # ω starts at 1 (plain Post-LN) until profiling or a profile file sets it.
        self.omega = nn.Parameter(torch.ones(d_model)) if scheme == "admin" else None
        # Set only while model.omega.profile_omega runs its profiling forward; see omega.py.
        self.profiler: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(branch(self.norm(x)))
        y = self.dropout(branch(x))
        if self.omega is not None:
            omega = self.profiler(x, y) if self.profiler is not None else self.omega
            return self.norm(torch.addcmul(y, x, omega.to(x.dtype)))  # ω ⊙ x + y in one pass
        return self.norm(torch.add(y, x, alpha=self.alpha))


def omega_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Admin's shortcut scales ω of ``model``, in module order (the order ``named_parameters`` meets them);
    empty for the other schemes. The trainer's optimizer groups and the checkpoint reader agree through it."""
    return [m.omega for m in model.modules() if isinstance(m, Residual) and m.omega is not None]
