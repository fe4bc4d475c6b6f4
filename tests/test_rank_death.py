"""A rank dies (SIGKILL) in the middle of a two-rank run: the other one stops within 2 minutes with a
message that names what happened, and the launcher exits non-zero. Under torchrun, the deepspeed
launcher, and as two separate processes the way srun starts them (no launcher to kill the survivor)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import ds_config, train_argv

from launch_util import REPO, free_port, launcher_env

BOUND_S = 120


def ranks_of(save_dir: Path) -> dict[int, int]:
    """{rank: pid} of the training processes that write to ``save_dir`` (their RANK or SLURM_PROCID)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            pairs = (entry / "environ").read_bytes().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in pairs if b"=" in item)
        except (OSError, ValueError):
            continue
        if b"admin_ds.train" not in cmdline or str(save_dir).encode() not in cmdline:
            continue
        rank = environ.get(b"RANK", environ.get(b"SLURM_PROCID"))
        launcher = b"torch.distributed.run" in cmdline or b"deepspeed.launcher" in b" ".join(cmdline)
        if rank is not None and not launcher:
            found[int(rank)] = int(entry.name)
    return found


def wait_for_training(save_dir: Path, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    metrics = save_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            return
        if any(proc.poll() is not None for proc in procs):
            raise AssertionError("training ended before the kill: " + procs[0].communicate()[0][-3000:])
        time.sleep(0.5)
    raise AssertionError("training did not start")


def kill_rank_one_and_wait(save_dir: Path, procs: list[subprocess.Popen],
                           how: signal.Signals = signal.SIGKILL) -> tuple[float, list[str]]:
    """Send ``how`` to rank 1; (seconds until every process in ``procs`` ended, their outputs)."""
    wait_for_training(save_dir, procs)
    victim = ranks_of(save_dir)[1]
    os.kill(victim, how)
    killed_at = time.monotonic()
    outputs = []
    if how == signal.SIGSTOP:  # a hung rank: only the survivor ends by itself
        outputs.append(procs[0].communicate(timeout=BOUND_S + 60)[0])
        seconds = time.monotonic() - killed_at
        os.kill(victim, signal.SIGKILL)
        procs[1].communicate(timeout=60)
        return seconds, outputs
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=BOUND_S + 60)[0])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running {BOUND_S + 60} s after a rank was killed") from None
    return time.monotonic() - killed_at, outputs


def long_run(tmp_path: Path, synthetic_data: Path) -> list[str]:
    config = ds_config(tmp_path, 2, "fp32")
    return train_argv(synthetic_data, tmp_path / "run", config, 100000, "--dist-timeout-minutes", "1")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_launcher_stops_when_a_rank_dies(tmp_path, synthetic_data, launcher):
    if launcher == "torchrun":
        start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(free_port()), "-m", "admin_ds.train"]
    else:
        start = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                 str(free_port()), "--module", "admin_ds.train"]
    proc = subprocess.Popen([*start, *long_run(tmp_path, synthetic_data)], cwd=REPO, env=launcher_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seconds, (output,) = kill_rank_one_and_wait(tmp_path / "run", [proc])
    assert proc.returncode != 0
    assert seconds < BOUND_S
    named = "exitcode  : -9" if launcher == "torchrun" else "exits with return code = -9"
    assert named in output, output[-3000:]
    assert ranks_of(tmp_path / "run") == {}, "no rank may outlive the launcher"


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "hangs"])
def test_survivor_without_a_launcher_stops_with_a_message(tmp_path, synthetic_data, how):
    """srun-style: two independent processes; nothing kills the survivor, it must stop by itself: at once
    when its peer's connection closes, after --dist-timeout-minutes (here 0.25) when the peer hangs."""
    port, procs = str(free_port()), []
    for task in range(2):
        env = {k: v for k, v in launcher_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(task), SLURM_NTASKS="2", SLURM_LOCALID=str(task), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        argv = [*long_run(tmp_path, synthetic_data), "--dist-timeout-minutes", "0.25"]
        procs.append(subprocess.Popen([sys.executable, "-m", "admin_ds.train", *argv],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    seconds, outputs = kill_rank_one_and_wait(tmp_path / "run", procs, how)
    assert procs[0].returncode == 2, f"survivor exited {procs[0].returncode}: " + outputs[0][-3000:]
    assert procs[1].returncode == -signal.SIGKILL
    assert seconds < BOUND_S
    last = outputs[0].strip().splitlines()[-1]
    assert last.startswith("admin-ds train: error: lost contact with another rank"), outputs[0][-3000:]
