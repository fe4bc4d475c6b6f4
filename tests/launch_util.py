"""Start real multi-process DeepSpeed runs from tests: the `deepspeed` launcher with CPU ranks over gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# What a launcher or an in-process run (a module fixture's cli_main(["train", ...]), which fills them and whose
# process group keeps MASTER_PORT) left in this process: a new run must choose its own.
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launcher_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in RENDEZVOUS}
    # Two ranks on two cores: one thread each, or they fight over the cores (docs/deepspeed.md).
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_deepspeed(args: list[str], num_ranks: int = 2, timeout: int = 300, master_port: int | None = None,
                  module: bool = False) -> subprocess.CompletedProcess:
    """Run ``deepspeed --num_gpus N [--module] ARGS...``; fail with the tail of the log if it fails."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_ranks)]
    if master_port is not None:
        command += ["--master_port", str(master_port)]
    if module:
        command.append("--module")
    command += args
    proc = subprocess.run(command, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"deepspeed run failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(args: list[str], num_ranks: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node N ARGS...`` (cheaper to start than the deepspeed launcher)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_ranks),
               "--master_port", str(free_port())] + args
    proc = subprocess.run(command, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
