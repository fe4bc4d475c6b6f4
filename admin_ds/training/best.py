"""The best model so far and early stopping (--best-metric, --patience; docs/contracts.md §5).

At every validation the tracker compares the metric (``valid_loss``: lower is better; ``bleu``, from
``--eval-bleu``: higher is better) with the best so far. With ``--best-metric`` an improvement replaces
``SAVE_DIR/best/`` with a small fp32 export of the weights (the layout of `admin-ds convert`, no optimizer
state), built in a temporary folder and renamed; checkpoint pruning never touches it. With ``--patience N``
the run ends after N validations in a row without an improvement, after its last checkpoint. The tracker's
state goes into every checkpoint, so a resumed run keeps the best value and the count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from admin_ds.checkpoints.exports import write_export
from admin_ds.checkpoints.rundir import HIGHER_IS_BETTER, tokenizer_files
from admin_ds.model import TranslationModel
from admin_ds.training.config import TrainConfig
from admin_ds.training.engine import gathered_master_state_dict

log = logging.getLogger("admin_ds")

BEST_DIR = "best"


def improves(metric: str, value: float, best: Optional[float]) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None: nothing to beat); a tie is no improvement."""
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


class BestTracker:
    """The best value of ``metric`` so far, its step, and the validations since it."""

    def __init__(self, cfg: TrainConfig, write_best: Callable[[int, str, float], None]):
        """``cfg``'s ``best_metric`` and ``patience``; ``write_best(step, metric, value)`` exports (a collective)."""
        self.write_best = write_best
        self.export = cfg.best_metric is not None
        self.metric = cfg.best_metric or "valid_loss"
        self.patience = cfg.patience
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.since_best = 0
        self.exhausted = False  # set once patience has run out

    @property
    def active(self) -> bool:
        return self.export or self.patience is not None

    def judge(self, row: dict) -> dict:
        """Compare validation ``row`` (the same on every rank: its sums were all-reduced) with the best so
        far; export on an improvement (every rank calls ``judge``: the export gathers the weights).
        Returns the row with the tracker's fields added."""
        if not self.active:
            return row
        value = row[self.metric]
        if improves(self.metric, value, self.best):
            self.best, self.best_step, self.since_best = value, row["step"], 0
            if self.export:
                self.write_best(row["step"], self.metric, value)
        else:
            self.since_best += 1
        row = {**row, f"best_{self.metric}": self.best, "best_step": self.best_step,
               "validations_since_best": self.since_best}
        if self.patience is not None and self.since_best >= self.patience:
            self.exhausted = True
            log.info("early stop at update %d: %s has not improved on %.4f (update %d) in %d validations "
                     "(--patience %d)", row["step"], self.metric, self.best, self.best_step, self.since_best,
                     self.patience)
            row["early_stop"] = True
        return row

    def state_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                "since_best": self.since_best}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """From a checkpoint's client_state; a checkpoint without one (or for another metric) starts afresh."""
        if state and state.get("metric") == self.metric:
            self.best, self.best_step, self.since_best = state["best"], state["best_step"], state["since_best"]


def write_best_export(engine, save_dir: Path, step: int, metric: str, value: float) -> None:
    """Replace ``SAVE_DIR/best`` with the current weights as an fp32 export from their fp32 masters, as `convert`
    would write the checkpoint of this update (every rank gathers, rank 0 writes)."""
    state = gathered_master_state_dict(engine)
    if engine.global_rank != 0:
        return
    with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave training's stream be
        model = TranslationModel(engine.module.cfg)
    model.load_state_dict(state)
    found = tokenizer_files(save_dir)
    files, entry = found if found is not None else (None, None)
    extra = {"best": {"step": step, "metric": metric, "value": value}}
    if entry is not None:
        extra["spm_model"] = entry
    write_export(model, save_dir / BEST_DIR, force=True, extra=extra, files=files)
