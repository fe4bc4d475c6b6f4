"""Stopping a run on a signal so that it can be resumed (docs/contracts.md §10).

A signal handler only records which signal came; every ``--stop-check-interval`` updates all ranks sum
their records in one small all-reduce, so they all see the same answer after the same update and stop
together, even when only one of them was signalled (srun and SLURM signal every task, but a user may
signal one rank). The loop then saves a full checkpoint through the usual checked-then-``latest`` path,
writes a ``stopped`` row and the command exits with ``EXIT_STOPPED``.

A second signal while the run is saving only sets the record again: nothing is interrupted, and the
checkpoint is published only after every rank's files were checked (training/saving.py).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch

from admin_ds.errors import UserError

log = logging.getLogger("admin_ds")

# sysexits.h EX_TEMPFAIL: "a temporary failure ... the user is invited to retry the operation later".
# Distinct from 0 (done), 1 (a crash), 2 (a user error), 130 (Ctrl-C) and 128+N (killed by signal N), so
# a batch script can tell "stopped to be resumed" from every other end.
EXIT_STOPPED = 75

# Signals a run may be told to stop on. SIGINT stays Ctrl-C (exit 130, no save); SIGKILL/SIGSTOP cannot be caught.
STOPPABLE = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")


def parse_stop_signals(text: str) -> tuple[str, ...]:
    """"SIGTERM,SIGUSR1" -> ("SIGTERM", "SIGUSR1"); "none" -> (). Names may leave out "SIG"."""
    if text.strip().lower() in ("", "none"):
        return ()
    names = []
    for part in text.split(","):
        name = part.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in STOPPABLE:
            raise UserError(f"--stop-signals: {part.strip()!r} is not one of {', '.join(STOPPABLE)} (or 'none')")
        names.append(name)
    return tuple(dict.fromkeys(names))


_received: list[str] = []  # the stop signals this process caught, in order (the handler appends)
_depth = [0]  # how many stop_signals_caught blocks are open


def _record(signum: int, frame) -> None:
    # A handler runs between two bytecodes of the main thread: it must not log (logging takes a lock the
    # interrupted code may hold) nor raise; it only notes the request.
    _received.append(signal.Signals(signum).name)


@contextmanager
def stop_signals_caught(signal_names: tuple[str, ...], until_exit_once_stopped: bool = False) -> Iterator[None]:
    """Record ``signal_names`` instead of dying of them while the block runs; the previous handlers after.
    Blocks nest: ``admin-ds train`` opens one as soon as its flags are read, so a signal that comes while
    the model is being built is kept for the first update; ``loop.train`` opens one for callers of the
    library. The outermost block starts with no signal recorded (tests run several runs in one process).

    ``until_exit_once_stopped``: after a stop, ignore these signals to the end of the process. The first
    rank to exit with 75 makes srun (--kill-on-bad-exit), torchrun and the deepspeed launcher send SIGTERM
    to the others, which have saved too and are closing: that signal must not turn their 75 into a kill.
    SIG_IGN, not a Python handler: Python puts the default action back for those as it shuts down."""
    if _depth[0] == 0:
        _received.clear()
    previous = {signal.Signals[name]: signal.signal(signal.Signals[name], _record) for name in signal_names}
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        stopped = until_exit_once_stopped and _received
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_IGN if stopped else handler)


class RunStopped(Exception):
    """Raised by ``loop.train`` after a stop on a signal, once the checkpoint is saved and the process group
    is closed; ``admin-ds train`` turns it into exit status ``EXIT_STOPPED``."""

    exit_status = EXIT_STOPPED


class StopRequest:
    """Signal handlers that record a stop request, and the collective that turns it into a decision.

    ``handlers_installed()`` around training (loop.train); ``due(step)`` after every update: a collective
    every ``check_interval`` updates, the same call on every rank.
    ``sum_over_ranks`` is that collective (engine.all_reduce_sum; this module needs no process group itself,
    so the config can import it without DeepSpeed)."""

    def __init__(self, signal_names: tuple[str, ...], check_interval: int,
                 sum_over_ranks: Optional[Callable[[torch.Tensor], torch.Tensor]]):
        self.signal_names = signal_names
        self.check_interval = check_interval
        self.sum_over_ranks = sum_over_ranks  # None: one rank, whose own record decides at every update
        self.stopped_by: Optional[str] = None  # set on every rank once the ranks agree to stop

    @classmethod
    def from_config(cls, failure, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor],
                    world_size: int) -> StopRequest:
        """From a FailureConfig's ``stop_signals`` and ``stop_check_interval``. One rank needs no collective:
        it checks its own record after every update, with no tensor and no host read."""
        return cls(parse_stop_signals(failure.stop_signals), failure.stop_check_interval,
                   sum_over_ranks if world_size > 1 else None)

    def handlers_installed(self):
        """``stop_signals_caught`` for this run's signals."""
        return stop_signals_caught(self.signal_names)

    @property
    def received(self) -> Optional[str]:
        """The first stop signal this process caught, if any."""
        return _received[0] if _received else None

    @property
    def times_received(self) -> int:
        return len(_received)

    def due(self, step: int, at_end: bool = False) -> bool:
        """Whether every rank stops after update ``step`` (a collective at every ``check_interval``-th update).
        ``at_end``: the run ends after this update anyway, and so ends as done, not as stopped."""
        if self.stopped_by is not None:
            return True
        if not self.signal_names or at_end:
            return False
        if self.sum_over_ranks is None:
            self.stopped_by = self.received
            return self.stopped_by is not None
        if step % self.check_interval != 0:
            return False
        mine = torch.zeros(len(STOPPABLE), dtype=torch.float64)
        if self.received is not None:
            mine[STOPPABLE.index(self.received)] = 1.0
        counts = self.sum_over_ranks(mine)
        seen = [name for name, count in zip(STOPPABLE, counts.tolist()) if count > 0]
        if seen:
            self.stopped_by = self.received or seen[0]
        return self.stopped_by is not None

    def announce(self, step: int, checkpoint: Path) -> dict:
        """The log line of a stop, once its checkpoint is saved; returns its metrics.jsonl row."""
        log.info("stopped after update %d on %s; checkpoint %s is saved: run the same command to resume "
                 "(exit status %d)", step, self.stopped_by, checkpoint, EXIT_STOPPED)
        return {"step": step, "stopped": self.stopped_by}
