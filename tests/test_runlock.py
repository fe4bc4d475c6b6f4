"""One run per run directory (docs/contracts.md §5, checkpoints/runlock.py): a second `admin-ds train` on a
directory another live process holds refuses with one line naming the holder; a lock left by a killed
process, by an earlier allocation of the same SLURM job, or from another host without a heartbeat does not
block the next run. Real processes and a real SIGKILL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_train import ds_config, train_argv

from admin_ds.checkpoints.runlock import RunLock, process_start_time, this_process, why_stale
from admin_ds.errors import UserError

from launch_util import REPO, launcher_env

HOLDER = """
import sys, time
from pathlib import Path
from admin_ds.checkpoints.runlock import RunLock
RunLock(Path(sys.argv[1]), 10.0).acquire()
print("held", flush=True)
time.sleep(600)
"""


def train_alone(argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m admin_ds.train` as one process (a one-rank group)."""
    return subprocess.run([sys.executable, "-m", "admin_ds.train", *argv], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)


def test_a_held_directory_refuses_and_a_killed_holder_does_not_block(tmp_path, synthetic_data):
    run = tmp_path / "run"
    argv = train_argv(synthetic_data, run, ds_config(tmp_path, 0, "fp32"), 2)
    env = {**launcher_env(), "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = train_alone(argv)
    finally:
        holder.send_signal(signal.SIGKILL)  # as a killed run: no chance to remove its lock
        holder.wait()
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"admin-ds train: error: {run} is in use by another run (host {socket.gethostname()}, "
                           f"PID {holder.pid}, SLURM job 4242, since "), last
    assert not (run / "train_config.json").exists(), "a refused run writes nothing"

    assert json.loads((run / "run.lock").read_text())["pid"] == holder.pid  # left behind by the kill
    resumed = train_alone(argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over the lock" in resumed.stderr and f"PID {holder.pid} is not running" in resumed.stderr
    assert (run / "latest").read_text() == "global_step2"
    assert not (run / "run.lock").exists(), "the run gives its lock back when it exits"


def test_staleness_rules(tmp_path):
    me = this_process()
    here = {**me, "pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    assert why_stale(here, 3600.0, 10.0, me) is None  # alive on this host: however old, it holds
    reused = {**here, "pid_start": here["pid_start"] + 1}
    assert "another process" in why_stale(reused, 0.0, 10.0, me)
    elsewhere = {**me, "host": me["host"] + "-other", "pid": 1}
    assert why_stale(elsewhere, 60.0, 10.0, me) is None  # another host with a recent heartbeat holds
    assert "no heartbeat for 11.0 minutes" in why_stale(elsewhere, 660.0, 10.0, me)
    job = {**me, "slurm_job": "77", "slurm_restart": 1}
    assert "earlier allocation" in why_stale({**elsewhere, "slurm_job": "77", "slurm_restart": 0}, 1.0, 10.0, job)
    assert why_stale({**elsewhere, "slurm_job": "77", "slurm_restart": 1}, 1.0, 10.0, job) is None  # same allocation
    assert why_stale(None, 1.0, 10.0, me) is None  # unreadable and fresh: being written, or foreign; wait

    lock_file = tmp_path / "run.lock"
    lock_file.write_text(json.dumps(elsewhere))
    with pytest.raises(UserError, match=r"is in use by another run \(host .*-other, PID 1, since"):
        RunLock(tmp_path, 10.0).acquire()
    old = time.time() - 11 * 60
    os.utime(lock_file, (old, old))
    lock = RunLock(tmp_path, 10.0, heartbeat_s=0.05)
    lock.acquire()  # taken over: no heartbeat for 11 minutes
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    os.utime(lock_file, (old, old))
    time.sleep(0.5)
    assert time.time() - lock_file.stat().st_mtime < 5, "the heartbeat touches the lock"
    RunLock(tmp_path, 10.0).acquire()  # the same process again (several runs in one process): allowed
    lock.release()
    assert not lock_file.exists()
