"""Averaging checkpoints (``admin-ds average-checkpoints``): the element-wise mean of their weights.

The Admin paper evaluates the average of the last checkpoints of a run (fairseq's average_checkpoints.py).
Inputs are anything ``admin_ds.load_model`` accepts; ``--save-dir DIR --last N`` picks the N
``DIR/global_stepK`` directories with the highest K, ``--best N`` the N still on disk whose validation rows in
``DIR/metrics.jsonl`` have the best value of the run's ``--best-metric`` (``valid_loss`` if it had none). Sums
are accumulated in float64, one model in memory at a time besides the running sum, and the mean is stored in
fp32.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.convert import tokenizer_for_export
from admin_ds.checkpoints.exports import write_export
from admin_ds.checkpoints.load import load_model
from admin_ds.checkpoints.rundir import HIGHER_IS_BETTER, METRICS, TRAIN_CONFIG, step_dirs, step_of
from admin_ds.errors import UserError
from admin_ds.io import check_new_output, read_json_object
from admin_ds.model import TranslationModel

logger = logging.getLogger(__name__)

# Settings that only matter while training; checkpoints that differ in them still average.
TRAINING_ONLY = ("dropout", "attention_dropout", "activation_dropout", "checkpoint_every")


def _architecture(model: TranslationModel) -> dict:
    config = model.cfg.to_dict()
    return {key: value for key, value in config.items() if key not in TRAINING_ONLY}


def average_models(models: Iterable[TranslationModel]) -> TranslationModel:
    """A new fp32 model (eval mode, CPU) whose every floating-point tensor is the mean over ``models``.

    ``models`` may be a generator, so that only one checkpoint is loaded at a time. All must share one
    architecture (UserError otherwise); the result takes the first one's config.
    """
    total: dict[str, torch.Tensor] = {}
    first = None
    count = 0
    for model in models:
        state = model.state_dict()
        if first is None:
            first = model
            total = {key: value.detach().to("cpu", torch.float64) if value.is_floating_point()
                     else value.detach().cpu().clone() for key, value in state.items()}
        else:
            expected, found = _architecture(first), _architecture(model)
            if found != expected:
                diff = ", ".join(f"{key} {expected[key]!r} vs {found[key]!r}"
                                 for key in expected if expected[key] != found[key])
                raise UserError(f"cannot average checkpoints of different models: checkpoint {count + 1} "
                                f"differs from the first in {diff}")
            for key, value in state.items():
                if value.is_floating_point():
                    total[key] += value.detach().to("cpu", torch.float64)
        count += 1
    if first is None:
        raise UserError("no checkpoints to average")
    averaged = TranslationModel(first.cfg)
    averaged.load_state_dict({key: value.div(count).float() if value.is_floating_point() else value
                              for key, value in total.items()})
    return averaged.eval()


def step_checkpoints(save_dir: str | Path, last: int) -> list[Path]:
    """The ``last`` ``global_stepN`` subdirectories of ``save_dir`` with the highest N, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        raise UserError(f"--save-dir {save_dir} does not exist")
    if last < 1:
        raise UserError(f"--last must be at least 1, got {last}")
    steps = step_dirs(save_dir)
    if len(steps) < last:
        raise UserError(f"--last {last} asks for more checkpoints than the {len(steps)} global_step* "
                        f"directories in {save_dir}")
    return steps[-last:]


def run_best_metric(save_dir: Path) -> str:
    """The --best-metric a run was trained with (its train_config.json), or valid_loss."""
    config = read_json_object(save_dir / TRAIN_CONFIG, "run config",
                              missing=f"{save_dir} has no {TRAIN_CONFIG}: is it a run directory of admin-ds train?")
    return (config.get("train") or {}).get("best_metric") or "valid_loss"


def validation_values(save_dir: Path, metric: str) -> dict[int, float]:
    """{step: value of ``metric``} of the validation rows of ``save_dir``'s metrics.jsonl (the last row of a
    step wins: a resumed run rewrites the rows after its checkpoint)."""
    path = save_dir / METRICS
    if not path.is_file():
        raise UserError(f"{save_dir} has no {METRICS}: --best needs the run's validation rows")
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number} is not a JSON object") from None
        if isinstance(row, dict) and isinstance(row.get(metric), (int, float)) and "step" in row:
            values[int(row["step"])] = float(row[metric])
    return values


def best_step_checkpoints(save_dir: str | Path, best: int, metric: Optional[str] = None) -> tuple[list[Path], str]:
    """The ``best`` ``global_stepN`` folders still on disk with the best validation ``metric`` (default: the
    run's --best-metric, else valid_loss), oldest first; and the metric used. Ties go to the newer step."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        raise UserError(f"--save-dir {save_dir} does not exist")
    if best < 1:
        raise UserError(f"--best must be at least 1, got {best}")
    metric = metric or run_best_metric(save_dir)
    values = validation_values(save_dir, metric)
    on_disk = {step_of(path.name): path for path in step_dirs(save_dir)}
    scored = [step for step in on_disk if step in values]
    if len(scored) < best:
        raise UserError(f"--best {best} asks for more checkpoints than the {len(scored)} in {save_dir} that have a "
                        f"{metric} validation row ({len(on_disk)} global_step* directories on disk)")
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    chosen = sorted(scored, key=lambda step: (sign * values[step], -step))[:best]
    return [on_disk[step] for step in sorted(chosen)], metric


def average_checkpoints(paths: list[Path], output: str | Path, force: bool = False) -> Path:
    """Average ``paths`` (anything ``load_model`` reads) into an fp32 export at ``output``, with the
    tokenizer of the newest one, one checkpoint in memory at a time."""
    check_new_output(output, force)
    for path in paths:
        if not path.exists():
            raise UserError(f"checkpoint not found: {path}")

    def load_each():
        for path in paths:
            logger.info("loading %s", path)
            yield load_model(path)

    model = average_models(load_each())
    files, extra = tokenizer_for_export(paths[-1])
    extra["averaged_from"] = [str(p) for p in paths]
    return write_export(model, output, force=force, extra=extra, files=files)
