"""One run per run directory: the lock file ``SAVE_DIR/run.lock`` (rundir.RUN_LOCK; docs/contracts.md §5).

The lock is a small JSON file naming its holder: host, PID, the PID's start time (so a reused PID is not
mistaken for the holder), SLURM job id if any, and when it was taken. It is created whole under a
temporary name and hard-linked to ``run.lock``: ``link`` fails when the name exists and is atomic on local
file systems and on NFS, Lustre and GPFS, where ``flock`` may not reach across nodes. While the run lives, a
thread touches the file every ``heartbeat_s`` seconds; the process removes it when it exits.

A lock whose holder is gone does not block the next run:

- held on this host: stale when its PID is not running, or runs a different process (another start time);
- held by an earlier allocation of the same SLURM job (same job id, lower SLURM_RESTART_COUNT): stale, since
  SLURM starts a requeued job only after every process of its previous allocation ended;
- held on another host, where the PID cannot be asked: stale when its mtime (the heartbeat) is older than
  ``stale_minutes``. The clocks of the two hosts must agree to well within that (NTP does).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from admin_ds.checkpoints.rundir import RUN_LOCK
from admin_ds.errors import UserError

log = logging.getLogger("admin_ds")


def process_start_time(pid: int) -> Optional[int]:
    """Clock ticks after boot at which ``pid`` started (Linux /proc), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def this_process() -> dict:
    """The holder record of the calling process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start_time(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(holder: dict) -> str:
    """"host gpu17, PID 4242, SLURM job 991, since ..." for the one-line refusal."""
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder.get('host')}, PID {holder.get('pid')}{job}, since {holder.get('since')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def why_stale(holder: Optional[dict], age_s: float, stale_minutes: float, me: dict) -> Optional[str]:
    """Why the lock of ``holder`` (None: unreadable), last touched ``age_s`` seconds ago, no longer holds
    for the process ``me`` (``this_process()``); None while it does."""
    if (holder is not None and me.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"]
            and isinstance(holder.get("slurm_restart"), int) and holder["slurm_restart"] < me["slurm_restart"]):
        # SLURM requeues a job under the same id and starts it again only after all its processes ended.
        return f"it is an earlier allocation of this SLURM job (restart {holder['slurm_restart']})"
    if holder is not None and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return f"PID {holder['pid']} is not running"
        started = process_start_time(holder["pid"])
        if holder.get("pid_start") is not None and started is not None and started != holder["pid_start"]:
            return f"PID {holder['pid']} is now another process"
        return None
    if age_s > 60.0 * stale_minutes:
        return f"no heartbeat for {age_s / 60:.1f} minutes"
    return None


class RunLock:
    """The lock of one run directory, taken by ``acquire`` and given back at exit (or by ``release``)."""

    def __init__(self, save_dir: Path, stale_minutes: float, heartbeat_s: Optional[float] = None):
        self.path = Path(save_dir) / RUN_LOCK
        self.stale_minutes = stale_minutes
        self.heartbeat_s = heartbeat_s or min(60.0, 15.0 * stale_minutes)
        self.me = this_process()
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; a UserError naming the holder if it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder, age_s = self._read()
            if self._is_mine(holder):
                return  # this process already holds it (a second run in the same process, e.g. a test)
            reason = why_stale(holder, age_s, self.stale_minutes, self.me)
            if reason is None:
                raise UserError(f"{self.path.parent} is in use by another run ({describe(holder or {})}); wait "
                                f"for it to end or choose another --save-dir (its lock is {self.path})")
            log.warning("taking over the lock of %s: %s (%s)", self.path.parent, describe(holder or {}), reason)
            self._remove_if(holder)
            if not self._create():
                raise UserError(f"{self.path.parent} was taken by another run just now "
                                f"({describe(self._read()[0] or {})})")
        threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True).start()
        atexit.register(self.release)

    def release(self) -> None:
        self._stop.set()
        if self._is_mine(self._read()[0]):
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        temporary = self.path.with_name(f".{RUN_LOCK}.{self.me['host']}.{self.me['pid']}")
        temporary.write_text(json.dumps(self.me) + "\n", encoding="utf-8")
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def _read(self) -> tuple[Optional[dict], float]:
        """(the holder record, or None when unreadable; seconds since the last heartbeat)."""
        try:
            age_s = time.time() - self.path.stat().st_mtime
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError):
            return None, age_s
        return (holder if isinstance(holder, dict) else None), age_s

    def _is_mine(self, holder: Optional[dict]) -> bool:
        keys = ("host", "pid", "pid_start")
        return holder is not None and all(holder.get(k) == self.me[k] for k in keys)

    def _remove_if(self, holder: Optional[dict]) -> None:
        """Remove the stale lock, unless another run replaced it since it was read."""
        if self._read()[0] == holder:
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError as err:  # a vanished mount: the run itself will say more
                log.warning("could not touch %s: %s", self.path, err)


def hold_run_directory(save_dir: Path, rank: int, failure,
                       sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> Optional[RunLock]:
    """Rank 0 takes the run directory's lock (``failure``: a FailureConfig, for ``lock_stale_minutes``);
    every rank learns whether it could (``sum_over_ranks`` is an all-reduce), so that all refuse together
    rather than leave the others waiting in a collective."""
    lock, error = None, None
    if rank == 0:
        try:
            lock = RunLock(save_dir, failure.lock_stale_minutes)
            lock.acquire()
        except UserError as err:
            error = err
    refused = sum_over_ranks(torch.tensor([1.0 if error else 0.0])).item()
    if error is not None:
        raise error
    if refused:
        raise UserError(f"{save_dir} is in use by another run (rank 0's message names it)")
    return lock
