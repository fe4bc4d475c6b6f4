"""``python -m admin_ds.train ARGS`` is ``admin-ds train ARGS``.

A module of its own so that launchers that run modules can start training: ``deepspeed --module
admin_ds.train``, ``torchrun -m admin_ds.train`` and ``srun python -m admin_ds.train``.
"""

import sys

from admin_ds.cli import main

if __name__ == "__main__":
    status = main(["train", *sys.argv[1:]])
    from admin_ds.training.stopping import EXIT_STOPPED

    if status not in (0, EXIT_STOPPED):  # a failure: exit as usual (the launcher's first report stays the dead rank's)
        sys.exit(status)
    # Finished, or stopped to be resumed: skip finalization, which can abort after the run (see the function).
    from admin_ds.training.engine import exit_skipping_finalization

    exit_skipping_finalization(status)
