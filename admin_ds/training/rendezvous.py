"""Where a process finds its rank and its peers, whichever launcher started it (no torch.distributed here:
the engine joins the group). Nothing here writes the environment: the command-line entry points do."""

from __future__ import annotations

import socket
from collections.abc import Mapping

# What deepspeed.init_distributed reads from the environment (without all of them it tries MPI discovery).
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_rendezvous_env(env: Mapping[str, str]) -> dict[str, str]:
    """The rendezvous variables ``env`` lacks, so that the deepspeed launcher, torchrun, srun and a bare
    ``python`` look alike to init_distributed; the caller adds them to ``os.environ``.

    torchrun and the deepspeed launcher set RANK/WORLD_SIZE/LOCAL_RANK; srun sets SLURM_* (the SLURM
    templates export MASTER_ADDR); a bare process gets a one-rank group on a free local port, since
    without these variables deepspeed falls back to MPI discovery and fails without mpi4py.
    """
    added: dict[str, str] = {}
    if "RANK" not in env and "SLURM_PROCID" in env:
        added.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env.get("SLURM_NTASKS", "1"),
                     LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
    if "RANK" not in env and "RANK" not in added:
        added.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if "MASTER_ADDR" not in env:
            added["MASTER_ADDR"] = "127.0.0.1"
        if "MASTER_PORT" not in env:
            added["MASTER_PORT"] = str(_free_port())
    defaults = {"LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in defaults.items():
        if name not in env and name not in added:
            added[name] = value
    return added
