"""Test hook (tests/test_cluster.py): every training update also sleeps ADMIN_DS_TEST_UPDATE_SLEEP seconds.

Python imports ``sitecustomize`` at start-up from the first folder on PYTHONPATH that has one, so putting
this folder there slows the ranks of a job whose command line a test cannot change (the SLURM template):
a run then outlasts a time limit of a few minutes while its ranks use little CPU. Sleeping changes no
number, so the run's weights stay those of a run without the hook.
"""

import os
import time

_SECONDS = float(os.environ.get("ADMIN_DS_TEST_UPDATE_SLEEP", "0"))

if _SECONDS > 0:
    from admin_ds.training import loop

    _real_after_update = loop.Trainer._after_update

    def _slow_after_update(self, window):
        time.sleep(_SECONDS)
        _real_after_update(self, window)

    loop.Trainer._after_update = _slow_after_update
