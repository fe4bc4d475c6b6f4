"""Saving a checkpoint so that a crash at any moment leaves ``latest`` naming a complete one.

Order (docs/contracts.md §5): each rank writes its RNG streams, DeepSpeed writes model, optimizer and
schedule without touching ``latest``, each rank checks the files it wrote, the ranks agree that every one
of them succeeded, and only then rank 0 publishes the tag in ``latest`` (atomically) and prunes old
checkpoints. A process killed before the publication leaves ``latest`` on the previous checkpoint; the
half-written folder is overwritten when training reaches that step again.

A failed write (a full disk, a quota, a vanished mount) stops the run with one line that names the
checkpoint still intact; the half-written folder is removed first, to give the space back.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import zipfile
from pathlib import Path

import torch

from admin_ds.checkpoints.rundir import LATEST, latest_tag, prunable, rng_state_file
from admin_ds.checkpoints.zero import rank_files
from admin_ds.errors import UserError
from admin_ds.io import write_bytes_atomic, write_text_atomic
from admin_ds.training.engine import all_reduce_sum, save_checkpoint, zero_stage_of
from admin_ds.training.state import rng_state

log = logging.getLogger("admin_ds")


def save_run_checkpoint(engine, save_dir: Path, tag: str, client_state: dict, rank: int, keep_last: int,
                        device: torch.device) -> None:
    """Write checkpoint ``tag`` of the run in ``save_dir`` on every rank (a collective), publish it, prune."""
    previous = latest_tag(save_dir)
    try:
        _write_rng_state(save_dir, tag, rank)
        save_checkpoint(engine, save_dir, tag, client_state)
    except (OSError, RuntimeError) as err:
        cause = err if isinstance(err, OSError) else _file_system_error(save_dir)
        if cause is None:
            raise  # not the file system: e.g. a collective failed because another rank died
        _remove_unpublished(save_dir / tag, previous)
        raise UserError(_failed_save_message(save_dir, tag, previous, cause)) from None
    problems = unreadable_files(save_dir / tag, rank, zero_stage_of(engine))
    for problem in problems:
        log.error("checkpoint %s: %s", tag, problem)
    failed_ranks = all_reduce_sum(torch.tensor([float(bool(problems))]), device).item()
    if failed_ranks:
        _remove_unpublished(save_dir / tag, previous)
        raise UserError(f"checkpoint {save_dir / tag} failed its check on {failed_ranks:.0f} rank(s) "
                        f"({problems[0] if problems else 'see the other ranks'}); {_intact(save_dir, previous)}")
    if rank == 0:
        write_text_atomic(save_dir / LATEST, tag)
        for old in prunable(save_dir, keep_last):
            shutil.rmtree(old, ignore_errors=True)


def _write_rng_state(save_dir: Path, tag: str, rank: int) -> None:
    """This rank's RNG streams (dropout differs per rank; DeepSpeed saves client_state from rank 0 only)."""
    rng_file = rng_state_file(save_dir, tag, rank)
    rng_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    write_bytes_atomic(rng_file, buffer.getvalue())


def unreadable_files(tag_dir: Path, rank: int, stage: int) -> list[str]:
    """What is wrong with the files ``rank`` wrote into ``tag_dir`` (empty when nothing is).

    Each rank checks its own files, so the check also holds where ranks do not share a file system. A
    torch.save file is a zip archive whose directory is written last: a file cut short by a crash or a
    full disk has none. Checking that needs only the file's tail, not a read of the whole checkpoint."""
    own = [rng_state_file(tag_dir.parent, tag_dir.name, rank), *rank_files(tag_dir, rank, stage)]
    problems = []
    for path in own:
        if not path.is_file():
            problems.append(f"{path.name} is missing")
        elif not zipfile.is_zipfile(path):
            problems.append(f"{path.name} is incomplete (no zip directory at its end)")
    return problems


def _file_system_error(save_dir: Path) -> OSError | None:
    """Why writing into ``save_dir`` fails now, or None when it does not.

    torch.save reports a failed write (ENOSPC, EDQUOT, EIO) only as a RuntimeError about stream positions;
    writing a probe of 1 MiB gets the operating system's own reason, and tells a full disk apart from
    a collective that failed inside DeepSpeed's save."""
    probe = save_dir / ".write-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 2**20)
            handle.flush()
            os.fsync(handle.fileno())
        return None
    except OSError as err:
        return err
    finally:
        probe.unlink(missing_ok=True)


def _remove_unpublished(tag_dir: Path, previous: str | None) -> None:
    """Delete a half-written checkpoint folder, never the one ``latest`` names."""
    if tag_dir.name != previous:
        shutil.rmtree(tag_dir, ignore_errors=True)


def _intact(save_dir: Path, previous: str | None) -> str:
    if previous is None:
        return "the run has no earlier checkpoint"
    return f"'{LATEST}' still names {save_dir / previous}, which is intact; run the same command to resume from it"


def _failed_save_message(save_dir: Path, tag: str, previous: str | None, err: OSError) -> str:
    free = shutil.disk_usage(save_dir).free if save_dir.is_dir() else 0
    reason = err.strerror or str(err)
    return (f"could not write checkpoint {save_dir / tag}: {reason} ({free / 2**20:.1f} MiB free there); "
            f"{_intact(save_dir, previous)} once there is room")
