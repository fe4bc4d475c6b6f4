"""Admin's ω: the profiling statistics and the profile file.

The math (Liu et al. 2020, "Understanding the Difficulty of Training Transformers", Admin; see
docs/admin.md). One training-mode forward over one batch; encoder and decoder keep separate accumulators
r, each starting at 1. Walking the sublayers in order:

    ω_i   <- r                                (set before the shortcut is added: later sublayers see it)
    v_in  = Var(ω_i ⊙ x_{i-1})                (one fp32 scalar over every position and feature)
    v_out = Var(Dropout(f_i(x_{i-1})))
    r     <- sqrt(v_in + v_out)

so ω_i² ≈ Var[x_0] + Σ_{j<i} Var[f_j]: the shortcut grows with the variance earlier branches added.

The closed forms (``closed_form_omega``) are the alternative start of the authors' later package
admin-torch, which sets every shortcut of a stack of N residual sublayers to one value computed from N
alone; no forward pass is needed (docs/admin.md, "The closed-form start").

This module needs only torch. The rank-0 hook (``admin_ds.training.engine.omega_hook``) runs
``profile_omega`` on every rank, broadcasts rank 0's values and writes them into the weights DeepSpeed owns.
ω then lives in the weights only: profiles written later are read back from them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from admin_ds.errors import UserError
from admin_ds.io import write_text_atomic

STACKS = ("encoder", "decoder")
SUBLAYERS_PER_LAYER = {"encoder": 2, "decoder": 3}  # self-attn, FFN / self-attn, cross-attn, FFN

# How ω starts: profiled on the first batch (the paper's Admin), or one of admin-torch's closed forms,
# named here after the value's growth in N (admin-torch names them by the output change each gives).
OMEGA_INITS = ("profile", "logn", "sqrtn", "one")
CLOSED_FORM_OUTPUT_CHANGE = {"logn": "O(log N)", "sqrtn": "O(1)", "one": "O(N)"}


def closed_form_omega(init: str, sublayers: int) -> float:
    """ω of every shortcut of a stack with ``sublayers`` (N) residual sublayers, admin-torch's closed form:

        logn    sqrt((N + 1) / ln(N + 1) - 1)    output change O(log N), admin-torch's default
        sqrtn   sqrt(N)                          output change O(1)
        one     1                                output change O(N): plain Post-LN

    N counts the sublayers of one stack (2 per encoder layer, 3 per decoder layer), so N >= 2 and
    ln(N + 1) > 0."""
    if init not in CLOSED_FORM_OUTPUT_CHANGE:
        raise UserError(f"--omega-init must be one of {', '.join(OMEGA_INITS)}, got {init!r}")
    if sublayers < 1:
        raise UserError(f"a closed-form ω needs at least one residual sublayer, got {sublayers}")
    if init == "logn":
        return math.sqrt((sublayers + 1) / math.log(sublayers + 1) - 1)
    return math.sqrt(sublayers) if init == "sqrtn" else 1.0


class _StackProfiler:
    """The accumulator r of one stack; called by each Residual in order during the profiling forward."""

    def __init__(self) -> None:
        self.r = 1.0
        self.omegas: list[float] = []

    def __call__(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        omega = self.r
        v_in = (shortcut.float() * omega).var()
        v_out = branch.float().var()
        self.omegas.append(omega)
        self.r = math.sqrt(float(v_in + v_out))
        return torch.tensor(omega, dtype=shortcut.dtype, device=shortcut.device)


@dataclass
class OmegaProfile:
    """One ω scalar per sublayer: ``encoder`` has 2N values, ``decoder`` 3M (docs/admin.md's order)."""

    encoder: list[float]
    decoder: list[float]

    # --- checks --------------------------------------------------------------------------------------
    def check_fits(self, encoder_layers: int, decoder_layers: int, source: str = "profile") -> OmegaProfile:
        if len(self.encoder) != 2 * encoder_layers or len(self.decoder) != 3 * decoder_layers:
            raise UserError(
                f"{source}: has {len(self.encoder)} encoder and {len(self.decoder)} decoder sublayers, the model "
                f"needs {2 * encoder_layers} and {3 * decoder_layers} ({encoder_layers} encoder / "
                f"{decoder_layers} decoder layers)")
        return self

    @classmethod
    def closed_form(cls, init: str, encoder_layers: int, decoder_layers: int) -> OmegaProfile:
        """Every sublayer of each stack at ``closed_form_omega`` of that stack's sublayer count: 2N encoder
        values at N_enc = 2N, 3M decoder values at N_dec = 3M."""
        counts = {"encoder": SUBLAYERS_PER_LAYER["encoder"] * encoder_layers,
                  "decoder": SUBLAYERS_PER_LAYER["decoder"] * decoder_layers}
        blocks = {stack: [closed_form_omega(init, n)] * n for stack, n in counts.items()}
        return cls(blocks["encoder"], blocks["decoder"])

    # --- the reference's profile.ratio.init format ---------------------------------------------------
    def to_text(self) -> str:
        lines = [f"{i} {value!r}" for block in (self.encoder, self.decoder) for i, value in enumerate(block, 1)]
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write atomically, so a crash never leaves half a profile."""
        write_text_atomic(path, self.to_text())

    @classmethod
    def read(cls, path: str | os.PathLike) -> OmegaProfile:
        """Parse ``INDEX VALUE`` lines: encoder block indexed 1..2N, then decoder block from 1 again."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise UserError(f"profile file not found: {path}") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not a text profile file (invalid UTF-8 at byte {err.start})") from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, path: str = "profile") -> OmegaProfile:
        """Parse the text of a profile file (``read``'s format); ``path`` names it in errors."""
        blocks: list[list[float]] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                index_value, value = float(fields[0]), float(fields[1])
                if len(fields) != 2 or index_value != int(index_value):
                    raise ValueError
            except (ValueError, IndexError):
                raise UserError(f"{path}:{number}: expected 'INDEX VALUE', got {line.strip()!r}") from None
            index = int(index_value)
            if index == 1:
                blocks.append([])
            if not blocks or index != len(blocks[-1]) + 1:
                expected = len(blocks[-1]) + 1 if blocks else 1
                raise UserError(f"{path}:{number}: index {index} out of order (expected {expected} or 1)")
            if not math.isfinite(value) or value <= 0:
                raise UserError(f"{path}:{number}: ω must be a finite positive number, got {fields[1]}")
            blocks[-1].append(value)
        if len(blocks) != 2:
            raise UserError(f"{path}: expected an encoder block and a decoder block (each starting at index 1), "
                            f"found {len(blocks)} block(s)")
        return cls(blocks[0], blocks[1])

    # --- moving ω between ranks and into a model ---------------------------------------------------
    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self.encoder + self.decoder, dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor, encoder_sublayers: int) -> OmegaProfile:
        flat = values.double().cpu().tolist()
        return cls(flat[:encoder_sublayers], flat[encoder_sublayers:])

    @classmethod
    def from_model(cls, model: torch.nn.Module,
                   read: Callable[[torch.nn.Parameter], torch.Tensor] = torch.Tensor.detach) -> OmegaProfile:
        """Read ω back from a model: the mean of each ω vector (trained ω is no longer one constant).

        ``read`` turns a parameter into its whole value; the default suits a model whose weights are whole.
        Under DeepSpeed pass one that gathers partitions (``training.engine.omega_profile``). The mean is
        taken in float64: an fp32 mean of equal values can land one ulp off the value itself."""
        values = {stack: [read(r.omega).double().mean().item() for r in model.residuals(stack)] for stack in STACKS}
        return cls(values["encoder"], values["decoder"])

    def targets(self, model: torch.nn.Module) -> Iterator[tuple[torch.nn.Parameter, float]]:
        """(ω parameter, value) pairs in sublayer order; refuses a model without ω or of another depth."""
        if not hasattr(model, "residuals") or model.cfg.residual != "admin":
            raise UserError("an ω profile only applies to a model with --residual admin")
        self.check_fits(model.cfg.encoder_layers, model.cfg.decoder_layers)
        for stack, values in (("encoder", self.encoder), ("decoder", self.decoder)):
            for residual, value in zip(model.residuals(stack), values):
                yield residual.omega, value

    def apply_(self, model: torch.nn.Module) -> None:
        """Fill every ω vector with its profiled scalar (for a model DeepSpeed has not wrapped yet)."""
        with torch.no_grad():
            for param, value in self.targets(model):
                param.fill_(value)

    def summary(self) -> str:
        enc, dec = self.encoder, self.decoder
        return (f"ω encoder {enc[0]:.3f} -> {enc[-1]:.3f} ({len(enc)} sublayers), "
                f"decoder {dec[0]:.3f} -> {dec[-1]:.3f} ({len(dec)} sublayers)")


@contextmanager
def _profiling(model: torch.nn.Module) -> Iterator[dict[str, _StackProfiler]]:
    profilers = {stack: _StackProfiler() for stack in STACKS}
    residuals = {stack: model.residuals(stack) for stack in STACKS}
    for stack in STACKS:
        for residual in residuals[stack]:
            residual.profiler = profilers[stack]
    try:
        yield profilers
    finally:
        for stack in STACKS:
            for residual in residuals[stack]:
                residual.profiler = None


def profile_omega(model: torch.nn.Module, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor,
                  dropout: bool = True, forward: Optional[Callable] = None) -> OmegaProfile:
    """Run one profiling forward and return ω for every sublayer. Parameters are not modified.

    Args:
        model: an Admin TranslationModel (possibly wrapped by DeepSpeed; pass the bare module).
        src_tokens [B, S], tgt_tokens [B, T]: the first training batch.
        dropout: profile in training mode as the reference does; False makes it deterministic.
        forward: what to call instead of ``model`` (e.g. a DeepSpeed engine, whose forward gathers
            ZeRO-3 partitions); defaults to the model itself.
    """
    if getattr(getattr(model, "cfg", None), "residual", None) != "admin":
        raise UserError("ω profiling needs a model with --residual admin")
    was_training = model.training
    model.train(dropout)
    try:
        with _profiling(model) as profilers, torch.no_grad():
            (forward or model)(src_tokens, tgt_tokens)
    finally:
        model.train(was_training)
    return OmegaProfile(profilers["encoder"].omegas, profilers["decoder"].omegas)
