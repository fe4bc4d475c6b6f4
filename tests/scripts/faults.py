"""`admin-ds train` with one injected fault (used by tests/test_failures.py); run alone or under torchrun.

    python tests/scripts/faults.py FAULT [ARG...] -- TRAIN_FLAGS...

Faults (each is real: a real SIGKILL, a really full file system, real non-finite gradients):
    kill-in-save STEP RANK     rank RANK writes half of its first file of checkpoint STEP, then SIGKILLs itself
    fill-disk-after-save STEP  after checkpoint STEP is saved, a file fills the run's file system
    bad-grads RANK STEPS       rank RANK's gradients are inf at each update in STEPS (comma-separated), once
    signal-in-save             every rank sends itself SIGTERM and SIGUSR1 as it starts its first checkpoint file
The command then runs as `admin-ds train` does (one line and exit 2 for a UserError).
"""

import os
import signal
import sys
from pathlib import Path

import torch

from admin_ds.cli import main as cli_main
from admin_ds.training import loop


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def kill_in_save(step: str, victim: str) -> None:
    real_save = torch.save

    def save(obj, target, *args, **kwargs):
        if isinstance(target, (str, Path)) and f"global_step{step}" in str(target) and rank() == int(victim):
            real_save(obj, target, *args, **kwargs)
            data = Path(target).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, target, *args, **kwargs)

    torch.save = save


def signal_in_save() -> None:
    real_save = torch.save
    sent = []

    def save(obj, target, *args, **kwargs):
        if not sent and isinstance(target, (str, Path)) and "global_step" in str(target):
            sent.append(target)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_save(obj, target, *args, **kwargs)

    torch.save = save


def fill_disk_after_save(step: str) -> None:
    real_save = loop.Trainer.save

    def save(self):
        real_save(self)
        if self.step == int(step) and self.rank == 0:
            with open(self.save_dir / "filler", "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
                except OSError:
                    pass  # the file system is full

    loop.Trainer.save = save


def bad_grads(victim: str, steps: str):
    """Returns a function that undoes the patch."""
    pending = {int(s) for s in steps.split(",")}
    real_step = loop.Trainer._train_step

    def train_step(self, batch, window):
        update = self.step + 1
        if rank() == int(victim) and update in pending:
            pending.discard(update)
            real_backward = self.engine.backward
            self.engine.backward = lambda loss, **kw: real_backward(loss * float("inf"), **kw)
            try:
                return real_step(self, batch, window)
            finally:
                self.engine.backward = real_backward
        return real_step(self, batch, window)

    loop.Trainer._train_step = train_step
    return lambda: setattr(loop.Trainer, "_train_step", real_step)


FAULTS = {"kill-in-save": kill_in_save, "signal-in-save": signal_in_save, "fill-disk-after-save": fill_disk_after_save,
          "bad-grads": bad_grads}

if __name__ == "__main__":
    split = sys.argv.index("--")
    fault, *fault_args = sys.argv[1:split]
    FAULTS[fault](*fault_args)
    sys.exit(cli_main(["train", *sys.argv[split + 1:]]))
