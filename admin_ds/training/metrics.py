"""Rank-0 training records: metrics.jsonl (docs/contracts.md, the run directory), TensorBoard, a tqdm bar."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from admin_ds.checkpoints.rundir import METRICS, TENSORBOARD
from admin_ds.errors import UserError
from admin_ds.io import write_text_atomic

log = logging.getLogger("admin_ds")


def setup_logging(rank: int) -> None:
    """INFO on rank 0, warnings only on the others (they would repeat rank 0's lines)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    # DeepSpeed's INFO lines would drown ours; its warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Only rank 0 creates one; other ranks hold ``None`` and log nothing.
    """

    def __init__(self, save_dir: Path, total_steps: Optional[int], start_step: int, tensorboard: bool):
        self.path = save_dir / METRICS
        self._keep_rows_until(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(save_dir / TENSORBOARD))
            except ImportError:
                log.warning("tensorboard is not installed; writing metrics.jsonl only")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=None if not os.environ.get("ADMIN_DS_PROGRESS") else False)

    def _keep_rows_until(self, step: int) -> None:
        """A fresh run starts an empty file; a resumed one drops rows logged after its checkpoint, which
        the resumed run is about to log again."""
        if not self.path.exists():
            return
        rows = []
        if step > 0:
            rows = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.path, "".join(row + "\n" for row in rows))

    def write(self, row: dict) -> None:
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as err:  # a full disk: the checkpoint `latest` names is still whole
            raise UserError(f"could not append to {self.path}: {err.strerror or err}; run the same command "
                            "to resume once there is room") from None
        if self.writer is not None:
            prefix = "valid" if any(key.startswith("valid") for key in row) else "train"
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])
        if "loss" in row:
            speed = {"tflops": f"{row['tflops_per_rank']:.3g}"} if "tflops_per_rank" in row else {}
            speed.update({"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {})
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                 tok_s=f"{row.get('tokens_per_s', 0):.0f}", **speed)
        else:
            log.info("step %d: %s", row["step"], ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                              if k != "step" and isinstance(v, float)))

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.writer is not None:
            self.writer.close()
