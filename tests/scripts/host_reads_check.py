"""`admin-ds train` with every non-log update watched for host reads (bench/host_reads.py); used by
tests/test_host_reads.py. Prints one JSON line: {"updates_watched": N, "sites": {site: count}}.

    python tests/scripts/host_reads_check.py TRAIN_FLAGS...

An update is watched from its forward to the end of its bookkeeping (``Trainer._train_step`` and
``Trainer._after_update``) unless it is the first (DeepSpeed sets itself up there) or a log step, whose
records are read on the host on purpose. Rank 0 prints.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from host_reads import HostReadSpy  # noqa: E402

from admin_ds.cli import main as cli_main  # noqa: E402
from admin_ds.training import loop  # noqa: E402

spy = HostReadSpy()
watched = []


def watched_update(trainer) -> bool:
    upcoming = trainer.step + 1
    log_step = upcoming % trainer.cfg.log_interval == 0 or upcoming == trainer.cfg.max_steps
    return trainer.step >= 1 and not log_step


def wrap(method, counts: bool):
    def run(self, *args, **kwargs):
        if not watched_update(self):
            return method(self, *args, **kwargs)
        if counts:
            watched.append(self.step + 1)
        with spy:
            return method(self, *args, **kwargs)

    return run


loop.Trainer._train_step = wrap(loop.Trainer._train_step, counts=True)
loop.Trainer._after_update = wrap(loop.Trainer._after_update, counts=False)
code = cli_main(["train", *sys.argv[1:]])
if os.environ.get("RANK", "0") == "0":
    print(json.dumps({"updates_watched": len(watched), "sites": dict(spy.sites)}), flush=True)
sys.exit(code)
