"""Bring up the loopback SLURM cluster and sshd of launch/cluster/ for tests, and talk to them (docs/cluster.md).

Everything listens on 127.0.0.1 only; every daemon is stopped by the PID its script recorded.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from launch_util import REPO, launcher_env

CLUSTER_SCRIPTS = REPO / "launch" / "cluster"
HOSTS_LINE = "127.0.0.1 n1 n2 # admin-ds loopback cluster"
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "pdsh", "ssh", "ssh-keygen")


def _missing() -> list[str]:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    return missing + ([] if Path("/usr/sbin/sshd").exists() else ["sshd"])


def packages_unavailable() -> Optional[str]:
    """None when SLURM, munge, sshd and pdsh are here (installing them with apt-get if they are not), else
    why they cannot be installed or run (the daemons need root: munged runs as munge, slurmd as root)."""
    if os.geteuid() != 0:
        return "not root: cannot apt-get install SLURM, munge, sshd and pdsh, nor start their daemons"
    if not _missing():
        return None
    if shutil.which("apt-get") is None:
        return f"{', '.join(_missing())} missing and no apt-get to install them"
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPTS / "install_packages.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0 or _missing():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"apt-get install of the cluster packages failed (rc {proc.returncode}): {tail}"
    return None


def free_port_base(count: int, start: int = 17000) -> int:
    """The first of ``count`` consecutive free loopback ports at or after ``start`` (stepping by 100)."""
    for base in range(start, 60000, 100):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free loopback port block")


def run_script(name: str, *args: str, env: Optional[dict] = None, timeout: int = 120) -> str:
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPTS / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def started_pids(folder: Path) -> list[int]:
    """The PIDs the cluster scripts recorded under ``folder`` and that are still alive."""
    files = list(folder.glob("run/*.pid")) + list(folder.glob("*.pid.started"))
    pids = [int(f.read_text().strip()) for f in files if f.read_text().strip().isdigit()]
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Slurm:
    """The clients of one loopback cluster: ``sbatch`` and friends with its SLURM_CONF."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = dict(launcher_env(), SLURM_CONF=str(folder / "slurm.conf"))

    def command(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=True,
                              timeout=60).stdout

    def job_id(self, name: str) -> int:
        wait_for(lambda: self.command("squeue", "-h", "-n", name, "-o", "%i").strip() != "", 60, f"job {name}")
        return int(self.command("squeue", "-h", "-n", name, "-o", "%i").split()[0])

    def state(self, job: int) -> str:
        return self.command("squeue", "-h", "-j", str(job), "-o", "%T").strip()

    def show(self, job: int, field: str) -> str:
        """One field of ``scontrol show job`` (the cluster keeps finished jobs: MinJobAge=0)."""
        return re.search(rf"\b{field}=(\S+)", self.command("scontrol", "show", "job", str(job))).group(1)

    def sbatch(self, name: str, log: Path, *train_flags: str, sbatch_flags: tuple = ()) -> list[str]:
        """The command line of ``sbatch --wait`` of launch/slurm_train.sbatch on 2 nodes x 1 CPU rank, GPU
        defaults overridden from the command line as docs/training.md says."""
        return ["sbatch", "--wait", f"--job-name={name}", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
                "--cpus-per-task=1", "--time=10", f"--output={log}", "--open-mode=append", *sbatch_flags,
                str(REPO / "launch" / "slurm_train.sbatch"), *train_flags]

    def submit(self, command: list[str], job_env: dict) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=REPO, env={**self.env, **job_env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)


def rank_pid(job: int, rank: int) -> Optional[int]:
    """The PID of the training process that is rank ``rank`` of SLURM job ``job`` (found by its environment)."""
    wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted <= environ and b"admin_ds.train" in cmdline:
            return int(entry.name)
    return None
