"""What survives what (README "Failure handling"): a kill -9 in the middle of a checkpoint save, a full
disk, non-finite gradients on one rank (skip, roll back, or stop), and pruning. Real processes, real
DeepSpeed over gloo, a real SIGKILL and a really full (tmpfs) file system."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import ds_config, rows, run_cases, train_argv, weights

from admin_ds.checkpoints.pickles import check_weights_only
from admin_ds.checkpoints.rundir import prunable
from admin_ds.training.saving import unreadable_files
from admin_ds.training.schedule import inverse_sqrt_factor

from launch_util import REPO, free_port, launcher_env

FAULTS = str(REPO / "tests" / "scripts" / "faults.py")


def torchrun_may_fail(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *args]
    return subprocess.run(command, cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=timeout)


def assert_complete(tag_dir: Path, stage: int, world: int) -> None:
    for rank in range(world):
        assert unreadable_files(tag_dir, rank, stage) == [], tag_dir
    check_weights_only(tag_dir)  # every file loads


@pytest.mark.slow
def test_kill_during_save_leaves_latest_complete_and_resumes_exactly(tmp_path, synthetic_data):
    """Rank 0 dies (SIGKILL) halfway through writing checkpoint 4 of a two-rank ZeRO-2 run: `latest` still
    names checkpoint 2, whole; the same command then ends bit-identical to a run that was never killed."""
    config = ds_config(tmp_path, 2, "fp32")
    extra = ("--save-interval", "2", "--dropout", "0.1")
    straight = run_cases(tmp_path, [{"name": "straight", "argv": train_argv(synthetic_data, tmp_path / "a", config,
                                                                          6, *extra)}], "straight")
    argv = train_argv(synthetic_data, tmp_path / "b", config, 6, *extra)
    killed = torchrun_may_fail([FAULTS, "kill-in-save", "4", "0", "--", *argv])
    assert killed.returncode != 0
    assert (tmp_path / "b" / "latest").read_text() == "global_step2"
    assert_complete(tmp_path / "b" / "global_step2", stage=2, world=2)
    half_written = tmp_path / "b" / "global_step4"
    assert half_written.is_dir() and unreadable_files(half_written, 0, 2), "the kill must hit the save"
    resumed = run_cases(tmp_path, [{"name": "resumed", "argv": argv}], "resumed")
    a, b = weights(straight, "straight"), weights(resumed, "resumed")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [r["loss"] for r in rows(tmp_path / "b") if "loss" in r] == [r["loss"] for r in rows(tmp_path / "a")]
    assert_complete(tmp_path / "b" / "global_step6", stage=2, world=2)


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs: big enough for the run, and really full once faults.py fills it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk is simulated with a tmpfs, which needs root: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.slow
def test_full_disk_during_save_keeps_the_previous_checkpoint(small_disk, synthetic_data):
    config = ds_config(small_disk.parent, 2, "fp32")
    argv = train_argv(synthetic_data, small_disk / "run", config, 6, "--save-interval", "2")
    full = subprocess.run([sys.executable, FAULTS, "fill-disk-after-save", "2", "--", *argv], cwd=REPO,
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith("admin-ds train: error: could not write checkpoint") and "global_step4" in message
    assert "No space left on device" in message and "still names" in message and "global_step2" in message
    assert "Traceback" not in full.stderr
    run = small_disk / "run"
    assert (run / "latest").read_text() == "global_step2" and not (run / "global_step4").exists()
    assert_complete(run / "global_step2", stage=2, world=1)
    (run / "filler").unlink()  # room again: the same command resumes from checkpoint 2 and finishes
    again = subprocess.run([sys.executable, "-m", "admin_ds", "train", *argv], cwd=REPO, env=launcher_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "latest").read_text() == "global_step6"
    assert "resumed from" in again.stderr and "global_step2" in again.stderr


@pytest.mark.slow
def test_non_finite_gradients_on_one_rank_are_skipped_or_rolled_back(tmp_path, synthetic_data):
    """inf gradients on rank 1 only. ZeRO-0 fp32 (the guard's own skip): one bad update is skipped by both
    ranks alike. ZeRO-2 (DeepSpeed's skip): three in a row are divergence, and the run goes back to
    checkpoint 4 with half the learning rate, then finishes."""
    z0, z2 = ds_config(tmp_path, 0, "fp32"), ds_config(tmp_path, 2, "fp32")
    cases = [{"name": "skip", "bad_grads": [1, "3"],
              "argv": train_argv(synthetic_data, tmp_path / "skip", z0, 6, "--save-interval", "2")},
             {"name": "rollback", "bad_grads": [1, "4,5,6"],
              # --no-resume: a rollback must still reload (it once went through the resume, which that skips)
              "argv": train_argv(synthetic_data, tmp_path / "rollback", z2, 8, "--save-interval", "2",
                                 "--skip-patience", "3", "--no-resume")}]
    out = run_cases(tmp_path, cases, "guard")
    skip = rows(tmp_path / "skip")
    assert [r["skipped_updates"] for r in skip] == [0, 0, 1, 1, 1, 1]
    assert not any("rollback" in r for r in skip)
    assert math.isnan(skip[2]["grad_norm"]) and all(math.isfinite(r["loss"]) for r in skip)
    for name in ("skip", "rollback"):
        rank0, rank1 = weights(out, name, 0), weights(out, name, 1)
        assert all(torch.equal(rank0[k], rank1[k]) and rank0[k].isfinite().all() for k in rank0), name
    history = rows(tmp_path / "rollback")
    rollback = [r for r in history if "rollback" in r]
    assert rollback == [{"step": 4, "rollback": 1, "diverged_at": 6, "lr_scale": 0.5,
                         "elapsed_s": rollback[0]["elapsed_s"]}]
    after = history[history.index(rollback[0]) + 1:]
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    # Update 4 was skipped before checkpoint 4, so the schedule had taken 7 steps at update 8.
    assert after[-1]["lr"] == pytest.approx(0.5 * 2e-3 * inverse_sqrt_factor(7, 5, 2e-3, 1e-7))


@pytest.mark.slow
def test_divergence_without_rollbacks_stops_and_keeps_the_last_checkpoint(tmp_path, synthetic_data):
    argv = train_argv(synthetic_data, tmp_path / "run", ds_config(tmp_path, 2, "fp32"), 8, "--save-interval",
                      "2", "--skip-patience", "3", "--max-rollbacks", "0")
    stopped = torchrun_may_fail([FAULTS, "bad-grads", "1", "4,5,6", "--", *argv])
    assert stopped.returncode != 0
    assert "admin-ds train: error: training diverged at update 6" in stopped.stderr
    assert "global_step4, is intact" in stopped.stderr
    assert "]: Traceback" not in stopped.stderr, "the ranks stop with one line (torchrun then prints its own)"
    assert (tmp_path / "run" / "latest").read_text() == "global_step4"
    assert_complete(tmp_path / "run" / "global_step4", stage=2, world=2)
    assert not (tmp_path / "run" / "global_step6").exists()


def test_pruning_never_removes_the_checkpoint_latest_names(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"global_step{step}").mkdir()
    (tmp_path / "latest").write_text("global_step2")  # e.g. a resume from an older checkpoint
    assert prunable(tmp_path, keep_last=2) == [tmp_path / "global_step4"]
    (tmp_path / "latest").write_text("global_step8")
    assert prunable(tmp_path, keep_last=2) == [tmp_path / "global_step2", tmp_path / "global_step4"]
    shutil.rmtree(tmp_path / "global_step2")
    assert prunable(tmp_path, keep_last=5) == []
