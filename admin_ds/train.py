"""``python -m admin_ds.train ARGS`` is ``admin-ds train ARGS``.

A module of its own so that launchers that run modules can start training: ``deepspeed --module
admin_ds.train``, ``torchrun -m admin_ds.train`` and ``srun python -m admin_ds.train``.
"""

import sys

from admin_ds.cli import main

if __name__ == "__main__":
    status = main(["train", *sys.argv[1:]])
    # Every way out skips finalization, which can abort (SIGABRT) after the gloo groups were destroyed: after a
    # finished or stopped run, and after a rank lost contact with a hung peer (the status would read -6, not 2,
    # and the message would not be the last line). See the function.
    from admin_ds.training.engine import exit_skipping_finalization

    exit_skipping_finalization(status)
