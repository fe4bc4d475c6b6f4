"""The launch scripts on a real SLURM cluster and over real ssh, all on 127.0.0.1 (docs/cluster.md).

Fixtures start launch/cluster/loopback_slurm.sh (munged, slurmctld, slurmd n1 and n2) and
launch/cluster/loopback_sshd.sh once per test run; the tests run launch/slurm_train.sbatch under
``sbatch --wait`` (plain, requeued, with ``deepspeed --launcher slurm``, with a rank killed) and
launch/train_multi_node.sh with a two-host hostfile through pdsh. Two CPU ranks, admin-tiny, a few steps
each. Skips only where the Debian packages cannot be installed.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from admin_ds.checkpoints.zero import read_deepspeed_checkpoint

from cluster_util import (
    HOSTS_LINE,
    Slurm,
    free_port_base,
    packages_unavailable,
    rank_pid,
    run_script,
    started_pids,
    wait_for,
)
from launch_util import REPO, free_port, launcher_env

pytestmark = pytest.mark.slow

TRAIN_FLAGS = ("--save-interval", "4", "--log-interval", "1", "--no-tensorboard", "--validate-interval", "0",
               "--dropout", "0.1")
STEPS = 12


@pytest.fixture(scope="session")
def packages():
    reason = packages_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(packages, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_PORT_BASE=str(free_port_base(3)))
    try:
        run_script("loopback_slurm.sh", "up", str(folder), env=env)
        yield Slurm(folder)
    finally:
        run_script("loopback_slurm.sh", "down", str(folder), env=env)
        assert started_pids(folder) == [], "loopback_slurm.sh down left daemons running"
        assert HOSTS_LINE not in Path("/etc/hosts").read_text().splitlines()


@pytest.fixture(scope="session")
def sshd(packages, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sshd")
    port = free_port_base(1, start=2222)
    try:
        exported = run_script("loopback_sshd.sh", "up", str(folder), str(port))
        yield port, re.search(r"PDSH_SSH_ARGS_APPEND='([^']*)'", exported).group(1)
    finally:
        run_script("loopback_sshd.sh", "down", str(folder))
        assert started_pids(folder) == [], "loopback_sshd.sh down left sshd running"


def job_env(data: Path, save: Path, steps: int, **extra: str) -> dict:
    """The template's knobs for a tiny CPU run; MASTER_PORT free, since a test machine runs other things."""
    return dict(DATA=str(data), SAVE=str(save), DS_CONFIG="ds_configs/cpu_zero2_fp32.json", ARCH="admin-tiny",
                MAX_TOKENS="300", MAX_STEPS=str(steps), WARMUP="5", MASTER_PORT=str(free_port()), **extra)


def finish(proc: subprocess.Popen, timeout: int, log: Path) -> int:
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"sbatch --wait still running after {timeout} s:\n{log.read_text()[-3000:]}") from None
    return proc.returncode


def rows(save: Path) -> list[dict]:
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


def losses(save: Path) -> list[float]:
    return [row["loss"] for row in rows(save) if "loss" in row]  # a stop on a signal adds a `stopped` row


def final_weights(save: Path, steps: int = STEPS) -> dict:
    """The fp32 weights of the newest checkpoint, as `admin-ds convert` reads them from the ZeRO shards."""
    model, info = read_deepspeed_checkpoint(save)
    assert info["step"] == steps and info["world_size"] == 2
    return model.state_dict()


@pytest.fixture(scope="module")
def straight(slurm, synthetic_data, tmp_path_factory):
    """One uninterrupted job: also the reference that the requeued job must match bit for bit."""
    tmp = tmp_path_factory.mktemp("straight")
    log = tmp / "job.out"
    started = time.perf_counter()
    proc = slurm.submit(slurm.sbatch("straight", log, *TRAIN_FLAGS), job_env(synthetic_data, tmp / "run", STEPS))
    rc = finish(proc, 300, log)
    print(f"straight job: {time.perf_counter() - started:.1f} s")
    return rc, tmp / "run", log


def test_sbatch_template_trains_on_two_nodes(straight):
    rc, save, log = straight
    assert rc == 0, log.read_text()[-3000:]
    assert (save / "latest").read_text().strip() == f"global_step{STEPS}"
    assert json.loads((save / "train_config.json").read_text())["world_size"] == 2
    tag = save / f"global_step{STEPS}"
    assert sorted(p.name for p in tag.glob("rng_state_rank*.pt")) == ["rng_state_rank0.pt", "rng_state_rank1.pt"]
    assert len(list(tag.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert len(losses(save)) == STEPS


def test_requeued_job_resumes_bit_identical(slurm, straight, synthetic_data, tmp_path):
    """`scontrol requeue` kills the running job after its first checkpoint; the job starts again by itself
    (the template has --requeue), resumes from `latest` and ends exactly where the uninterrupted job ended."""
    log, save = tmp_path / "job.out", tmp_path / "run"
    started = time.perf_counter()
    proc = slurm.submit(slurm.sbatch("requeue", log, *TRAIN_FLAGS), job_env(synthetic_data, save, STEPS))
    job = slurm.job_id("requeue")
    wait_for(lambda: (save / "latest").exists() or proc.poll() is not None, 240, "the first checkpoint")
    slurm.command("scontrol", "requeue", str(job))
    # A requeued batch job gets a BeginTime ~2 minutes away: bring it to 3 s from now. Not sooner: the nodes
    # refuse, to the second, the credentials of the run they just killed ("Job credential revoked").
    wait_for(lambda: slurm.state(job) == "PENDING", 60, "the requeued job to be pending")
    slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now+3")
    # sbatch --wait may return when it sees the killed first run, so follow the job itself to its end.
    finish(proc, 300, log)
    wait_for(lambda: slurm.show(job, "JobState") not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"), 300,
             "the requeued job to end", interval=0.5)
    assert (slurm.show(job, "JobState"), slurm.show(job, "ExitCode")) == ("COMPLETED", "0:0"), log.read_text()[-3000:]
    assert slurm.show(job, "Restarts") == "1"
    resumed = re.findall(r"resumed from \S+ at step (\d+)", log.read_text())
    print(f"requeued job: {time.perf_counter() - started:.1f} s, resumed at step {resumed}")
    assert len(resumed) == 1 and 0 < int(resumed[0]) < STEPS, f"the requeue did not interrupt training: {resumed}"
    assert losses(save) == losses(straight[1])
    reference, weights = final_weights(straight[1]), final_weights(save)
    assert reference.keys() == weights.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after the requeue"


def test_deepspeed_slurm_launcher_inside_the_allocation(slurm, synthetic_data, tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "run"
    started = time.perf_counter()
    proc = slurm.submit(slurm.sbatch("ds-launcher", log, *TRAIN_FLAGS),
                        job_env(synthetic_data, save, 4, LAUNCHER="deepspeed"))
    assert finish(proc, 300, log) == 0, log.read_text()[-3000:]
    print(f"deepspeed --launcher slurm job: {time.perf_counter() - started:.1f} s")
    text = log.read_text()
    assert re.search(r"cmd = srun -n 2 --kill-on-bad-exit=1 .*launch/admin_ds_train\.py", text), text[-3000:]
    assert (save / "latest").read_text().strip() == "global_step4"
    assert json.loads((save / "train_config.json").read_text())["world_size"] == 2
    assert len(list((save / "global_step4").glob("rng_state_rank*.pt"))) == 2


def test_a_dead_rank_fails_the_job(slurm, synthetic_data, tmp_path):
    """Rank 1 killed (-9) mid-training: srun --kill-on-bad-exit ends rank 0 too, and sbatch --wait fails."""
    log, save = tmp_path / "job.out", tmp_path / "run"
    started = time.perf_counter()
    proc = slurm.submit(slurm.sbatch("dead-rank", log, *TRAIN_FLAGS), job_env(synthetic_data, save, 100000))
    job = slurm.job_id("dead-rank")
    wait_for(lambda: (save / "metrics.jsonl").exists() and (save / "metrics.jsonl").read_text().strip() != "",
             240, "training to start")
    pid = rank_pid(job, 1)
    assert pid is not None, "no process with SLURM_PROCID=1 for the job"
    os.kill(pid, signal.SIGKILL)
    rc = finish(proc, 120, log)
    print(f"dead-rank job: {time.perf_counter() - started:.1f} s")
    assert rc != 0, log.read_text()[-3000:]
    assert slurm.command("squeue", "-h", "-j", str(job)).strip() == "" or slurm.state(job) != "RUNNING"


def test_multi_node_script_over_pdsh_and_ssh(sshd, synthetic_data, tmp_path):
    """launch/train_multi_node.sh with two names for this machine in the hostfile: pdsh logs in to both
    over the loopback sshd and each starts one rank."""
    port, ssh_args = sshd
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    save = tmp_path / "run"
    env = dict(launcher_env(), **job_env(synthetic_data, save, 4), HOSTFILE=str(hostfile), MASTER_ADDR="127.0.0.1",
               PDSH_SSH_ARGS_APPEND=ssh_args, LAUNCHER_FLAGS=f"--ssh_port {port} --no_ssh_check")
    started = time.perf_counter()
    proc = subprocess.run(["bash", "launch/train_multi_node.sh", *TRAIN_FLAGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    print(f"hostfile launcher run: {time.perf_counter() - started:.1f} s")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "pdsh -S" in out and "-w localhost,127.0.0.1" in out
    assert re.search(r"^localhost: .*dist_world_size=2", out, re.M) and re.search(r"^127\.0\.0\.1: ", out, re.M)
    assert (save / "latest").read_text().strip() == "global_step4"
    assert json.loads((save / "train_config.json").read_text())["world_size"] == 2


SLOW_UPDATES = REPO / "tests" / "scripts" / "slow_updates"  # its sitecustomize.py sleeps at every update
LIMITED_STEPS, UPDATE_SLEEP_S = 400, 0.4  # over 160 s of training: longer than one allocation


def test_time_limit_stops_saves_and_requeues_until_done(slurm, synthetic_data, tmp_path):
    """A job whose training outlasts its time limit (3 minutes; the template's warning moved to 60 s
    before it, so that it never lands while the ranks start): at each warning the ranks save and exit 75, the
    job requeues itself, and after the requeues it ends COMPLETED with the weights of an uninterrupted job."""
    reference = tmp_path / "reference"
    proc = slurm.submit(slurm.sbatch("reference", tmp_path / "reference.out", *TRAIN_FLAGS),
                        job_env(synthetic_data, reference, LIMITED_STEPS))
    assert finish(proc, 300, tmp_path / "reference.out") == 0, (tmp_path / "reference.out").read_text()[-3000:]

    log, save = tmp_path / "job.out", tmp_path / "run"
    started = time.perf_counter()
    env = job_env(synthetic_data, save, LIMITED_STEPS, ADMIN_DS_TEST_UPDATE_SLEEP=str(UPDATE_SLEEP_S),
                  PYTHONPATH=os.pathsep.join([str(SLOW_UPDATES), str(REPO)]))
    proc = slurm.submit(slurm.sbatch("limited", log, *TRAIN_FLAGS, sbatch_flags=("--time=3", "--signal=B:USR1@60")),
                        env)
    job = slurm.job_id("limited")
    deadline = time.monotonic() + 840
    while slurm.show(job, "JobState") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        if slurm.show(job, "JobState") == "PENDING" and slurm.show(job, "Reason") == "BeginTime":
            # SLURM holds a requeued job ~2 minutes; bring it to 3 s from now (not sooner: docs/cluster.md).
            slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now+3")
        time.sleep(2)
    proc.kill()
    seconds = time.perf_counter() - started
    text = log.read_text()
    restarts = int(slurm.show(job, "Restarts"))
    print(f"time-limited job: {seconds:.1f} s, {restarts} requeue(s)")
    assert (slurm.show(job, "JobState"), slurm.show(job, "ExitCode")) == ("COMPLETED", "0:0"), text[-3000:]
    assert restarts >= 1 and text.count("training stopped to be resumed; requeueing job") == restarts, text[-3000:]
    stops = [row for row in rows(save) if "stopped" in row]
    assert len(stops) == restarts and all(row["stopped"] == "SIGUSR1" for row in stops), stops
    assert losses(save) == losses(reference)
    expected, weights = final_weights(reference, LIMITED_STEPS), final_weights(save, LIMITED_STEPS)
    for name, tensor in expected.items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after the requeues"
