"""Resuming on another number of ranks: DeepSpeed's universal checkpoint (docs/contracts.md §5).

A ZeRO checkpoint saved by W ranks is read back by W ranks as it is. Saved by another number, rank 0
converts it with DeepSpeed's ``ds_to_universal`` into ``SAVE_DIR/universal/TAG`` and every rank loads that;
the batch sampler carries the data position over (data/batching.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.pickles import check_weights_only
from admin_ds.checkpoints.rundir import UNIVERSAL
from admin_ds.checkpoints.zero import saved_world_size
from admin_ds.errors import UserError, first_line
from admin_ds.training.engine import broadcast_from_rank0, convert_to_universal, load_checkpoint

log = logging.getLogger("admin_ds")


def load_any_world_size(engine, save_dir: Path, tag: str, rank: int, world: int,
                        device: torch.device) -> Optional[dict]:
    """DeepSpeed's load of ``tag``. A ZeRO checkpoint written by another number of ranks is converted to
    DeepSpeed's universal form first (once, by rank 0, into SAVE_DIR/universal/TAG) and loaded from it."""
    saved = saved_world_size(save_dir / tag)
    if saved is None or saved == world:
        return load_checkpoint(engine, save_dir, tag)
    log.info("%s was saved by %d rank(s) and this run has %d: resuming through DeepSpeed's universal checkpoint "
             "in %s", tag, saved, world, save_dir / UNIVERSAL / tag)
    _make_universal(save_dir, tag, rank, device)
    # A rank reads only its own parameters' files: all must refuse a bad one together, before any collective.
    check_weights_only(save_dir / UNIVERSAL / tag, "**/*.pt")
    return load_checkpoint(engine, save_dir / UNIVERSAL, tag, universal=True)


def _make_universal(save_dir: Path, tag: str, rank: int, device: torch.device) -> None:
    """Rank 0 converts ``tag`` unless a complete conversion is there (built under a temporary name, then
    renamed; ``save`` removes them all, so none outlives a newer save), and drops older ones; the other
    ranks wait for its verdict, so a failure stops them all."""
    root, error = save_dir / UNIVERSAL, None
    if rank == 0 and not (root / tag).is_dir():
        partial = root / f".{tag}.partial"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            convert_to_universal(save_dir / tag, partial)
            partial.rename(root / tag)
        except Exception as err:  # the other ranks must hear of it, or they wait forever
            error = err if isinstance(err, UserError) else UserError(
                f"cannot convert {save_dir / tag} to a universal checkpoint ({first_line(err)})")
        for old in root.iterdir() if error is None else ():
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    failed = broadcast_from_rank0(torch.tensor([float(error is not None)], device=device))
    if error is not None:
        raise error
    if failed.item():
        raise UserError(f"rank 0 could not convert {save_dir / tag} to a universal checkpoint")
