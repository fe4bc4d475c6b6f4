"""``python -m admin_ds.train ARGS`` is ``admin-ds train ARGS``.

A module of its own so that launchers that run modules can start training: ``deepspeed --module
admin_ds.train``, ``torchrun -m admin_ds.train`` and ``srun python -m admin_ds.train``.
"""

import sys

from admin_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
