"""``python launch/admin_ds_train.py ARGS`` is ``admin-ds train ARGS``, by file path.

For launchers that start a script file rather than a module: the slurm backend of the deepspeed launcher
runs ``srun ... python -u SCRIPT ARGS`` and ignores ``--module`` (launch/slurm_train.sbatch, LAUNCHER=deepspeed).
This folder holds no Python modules, so putting it first on sys.path shadows nothing.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("admin_ds.train", run_name="__main__", alter_sys=True)
