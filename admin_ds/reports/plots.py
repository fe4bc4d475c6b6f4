"""``admin-ds plot``: loss curves, ω per sublayer, the fp16 loss scale and tokens/s, from a run's files.

Inputs, in any mix (each one a labelled series on the figures it has data for):
  - a ``metrics.jsonl`` file, or a run directory holding one: training and validation loss against the
    update, the fp16 loss scale, tokens/s, and the validation BLEU and chrF of ``train --eval-bleu``;
  - a profile file in the profile.ratio.init format (``omega.profile``): ω per sublayer;
  - a checkpoint (anything ``load_model`` reads): ω per sublayer as its weights hold it (the mean of each
    vector).
A run directory with an ``omega.profile`` contributes that too. Figures are PNGs written atomically into
``--out``: loss.png, omega.png, loss_scale.png, tokens_per_s.png, bleu.png, chrf.png (only those some input
has data for).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.load import load_model
from admin_ds.checkpoints.rundir import METRICS, OMEGA_PROFILE
from admin_ds.errors import UserError
from admin_ds.io import write_bytes_atomic
from admin_ds.model import OmegaProfile


@dataclass
class Series:
    """What one input contributes: metrics rows and/or an ω profile, under a label."""

    label: str
    rows: list[dict] = field(default_factory=list)
    omega: Optional[OmegaProfile] = None


def read_metrics(path: Path) -> list[dict]:
    """The JSON rows of a metrics.jsonl; a UserError names the line that is not one."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not a JSON object (is this a metrics.jsonl?)") from None
        if not isinstance(row, dict) or "step" not in row:
            raise UserError(f"{path}:{number}: a metrics row needs a 'step'")
        rows.append(row)
    return rows


def omega_of_checkpoint(path: Path) -> OmegaProfile:
    model = load_model(path)
    if model.cfg.residual != "admin":
        raise UserError(f"{path}: a {model.cfg.residual} model has no ω to plot")
    return OmegaProfile.from_model(model)


def read_input(path: Path) -> Series:
    """Whatever ``path`` holds, as a Series (see the module docstring)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    label = path.name if path.is_dir() else (path.parent.name if path.name == METRICS else path.stem)
    if path.is_dir() and (path / METRICS).is_file():
        profile = path / OMEGA_PROFILE
        return Series(label, read_metrics(path / METRICS), OmegaProfile.read(profile) if profile.is_file() else None)
    if path.suffix == ".jsonl":
        return Series(label, read_metrics(path))
    if path.is_file() and _looks_like_text(path):
        return Series(label, omega=OmegaProfile.read(path))
    return Series(label, omega=omega_of_checkpoint(path))


def _looks_like_text(path: Path) -> bool:
    """A profile file is short text; checkpoints and weight files are binary."""
    with open(path, "rb") as handle:  # only the head: a checkpoint file can be gigabytes
        head = handle.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


# --- figures ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))
              and math.isfinite(row[key])]
    return [s for s, _ in points], [v for _, v in points]


def _save(fig, out_dir: Path, name: str) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return write_bytes_atomic(out_dir / name, buffer.getvalue())


def plot_losses(series: list[Series], out_dir: Path) -> Optional[Path]:
    """One colour per run: training loss thin and faint, validation loss dashed with dots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    drawn = False
    for index, s in enumerate(series):
        labelled = False
        for key, style, width, alpha in (("valid_loss", "o--", 1.6, 1.0), ("loss", "-", 1.0, 0.45)):
            steps, values = _curve(s.rows, key)
            if steps:
                ax.plot(steps, values, style, color=colors[index % len(colors)], linewidth=width, alpha=alpha,
                        markersize=3, label=None if labelled else s.label)
                drawn = labelled = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="update", ylabel="label-smoothed loss per target token",
           title="Loss: training (thin) and validation (dashed, dots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    return _save(fig, out_dir, "loss.png")


def plot_metric(series: list[Series], out_dir: Path, key: str, ylabel: str, title: str, name: str,
                log: bool = False) -> Optional[Path]:
    curves = [(s.label, *_curve(s.rows, key)) for s in series]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, steps, values in curves:
        ax.plot(steps, values, "-", label=label)
    if log:
        ax.set_yscale("log", base=2)
    ax.set(xlabel="update", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, name)


def plot_omega(series: list[Series], out_dir: Path) -> Optional[Path]:
    profiles = [(s.label, s.omega) for s in series if s.omega is not None]
    if not profiles:
        return None
    plt = _pyplot()
    fig, (enc, dec) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, profile in profiles:
        enc.plot(range(1, len(profile.encoder) + 1), profile.encoder, ".-", markersize=3, label=label)
        dec.plot(range(1, len(profile.decoder) + 1), profile.decoder, ".-", markersize=3, label=label)
    enc.set(xlabel="encoder sublayer (self-attn, FFN per layer)", ylabel="ω", title="Encoder ω")
    dec.set(xlabel="decoder sublayer (self, cross, FFN per layer)", title="Decoder ω")
    for ax in (enc, dec):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "omega.png")


def plot(paths: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Read every input, then write the figures some input has data for; returns their paths."""
    series = [read_input(Path(p)) for p in paths]  # every input is checked before anything is written
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_losses(series, out_dir), plot_omega(series, out_dir),
               plot_metric(series, out_dir, "loss_scale", "loss scale (log2)", "fp16 dynamic loss scale",
                           "loss_scale.png", log=True),
               plot_metric(series, out_dir, "tokens_per_s", "target tokens / s", "Training throughput",
                           "tokens_per_s.png"),
               plot_metric(series, out_dir, "bleu", "BLEU", "Validation BLEU (--eval-bleu)", "bleu.png"),
               plot_metric(series, out_dir, "chrf", "chrF", "Validation chrF (--eval-bleu)", "chrf.png")]
    written = [path for path in written if path is not None]
    if not written:
        raise UserError("nothing to plot: none of the inputs has loss rows or ω")
    return written
