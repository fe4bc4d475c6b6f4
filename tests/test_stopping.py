"""A stop signal in the middle of a two-rank run (docs/contracts.md §10): every rank stops after the same
update, the checkpoint is at that update (not the last periodic one), a `stopped` row is written, the exit
status is 75, and running the same command again ends bit-identical to a run that never stopped. Under
torchrun (the launcher itself is signalled and forwards it) and the deepspeed launcher (only rank 1 is
signalled: rank 0 learns of it through the ranks' agreement). Real processes, real signals."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_failures import assert_complete
from test_rank_death import ranks_of, wait_for_training
from test_train import ds_config, rows, run_cases, train_argv, weights

from admin_ds.training.config import FailureConfig
from admin_ds.training.stopping import EXIT_STOPPED, StopRequest, parse_stop_signals, stop_signals_caught

from launch_util import REPO, free_port, launcher_env

FAULTS = str(REPO / "tests" / "scripts" / "faults.py")
STOPPED_LINE = "admin-ds train: stopped on SIGTERM after update"


def launch(launcher: str, argv: list[str]) -> subprocess.Popen:
    if launcher == "torchrun":  # faults.py: a second and a third signal arrive during the save
        start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(free_port()), FAULTS, "signal-in-save", "--"]
    else:
        start = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                 str(free_port()), "--module", "admin_ds.train"]
    return subprocess.Popen([*start, *argv], cwd=REPO, env=launcher_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def signal_and_wait(launcher: str, save_dir: Path, proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM to torchrun itself, or to rank 1 alone under the deepspeed launcher; (last step logged
    before the signal, the launcher's output)."""
    wait_for_training(save_dir, [proc])
    target = proc.pid if launcher == "torchrun" else ranks_of(save_dir)[1]
    logged = max(row["step"] for row in rows(save_dir))
    os.kill(target, signal.SIGTERM)
    try:
        output = proc.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the run did not stop within 180 s of SIGTERM") from None
    return logged, output


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_sigterm_saves_at_that_update_and_the_rerun_is_exact(tmp_path, synthetic_data, launcher):
    config = ds_config(tmp_path, 2, "fp32")
    # RNG streams matter to the rerun; the ranks agree at every update (not every 10th, the default), so the
    # stop lands right after the signal.
    extra = ("--dropout", "0.1", "--stop-check-interval", "1")
    stopped_dir = tmp_path / "stopped"
    proc = launch(launcher, train_argv(synthetic_data, stopped_dir, config, 100000, *extra))
    logged, output = signal_and_wait(launcher, stopped_dir, proc)

    assert output.count(STOPPED_LINE) == 2, output[-4000:]  # both ranks, the unsignalled one too
    if launcher == "deepspeed":  # the launcher passes the ranks' status on
        assert proc.returncode == EXIT_STOPPED, output[-4000:]
    else:  # torchrun, itself signalled, reports its own SignalException after the ranks ended
        assert "SignalException" in output and proc.returncode == 1, output[-4000:]
    stop_row = rows(stopped_dir)[-1]
    stop = stop_row["step"]
    assert stop_row["stopped"] == "SIGTERM" and logged <= stop < logged + 20, (logged, stop_row)
    assert (stopped_dir / "latest").read_text() == f"global_step{stop}"  # not a periodic one (every 100)
    assert stop % 100 != 0
    assert_complete(stopped_dir / f"global_step{stop}", stage=2, world=2)

    # The same command again (to a few updates further), and a run that never stopped.
    end = stop + 3
    out = run_cases(tmp_path, [
        {"name": "straight", "argv": train_argv(synthetic_data, tmp_path / "straight", config, end, *extra)},
        {"name": "resumed", "argv": train_argv(synthetic_data, stopped_dir, config, end, *extra)}], "rerun")
    a, b = weights(out, "straight"), weights(out, "resumed")
    assert all(torch.equal(a[key], b[key]) for key in a)
    losses = [r["loss"] for r in rows(stopped_dir) if "loss" in r]
    assert losses == [r["loss"] for r in rows(tmp_path / "straight")]
    assert [r["step"] for r in rows(stopped_dir) if "stopped" in r] == [stop]


def test_stop_signals_and_the_agreement():
    assert parse_stop_signals("SIGTERM,usr1,SIGTERM") == ("SIGTERM", "SIGUSR1")
    assert parse_stop_signals("none") == ()
    for bad in ("SIGKILL", "SIGINT", "TERM,bogus"):
        with pytest.raises(Exception, match="--stop-signals"):
            FailureConfig(stop_signals=bad).validate()
    with pytest.raises(Exception, match="--stop-check-interval must be positive"):
        FailureConfig(stop_check_interval=0).validate()

    other_rank = {"signal": None}  # a stand-in for the all-reduce: this rank's record plus another rank's

    def sum_over_ranks(mine: torch.Tensor) -> torch.Tensor:
        theirs = torch.zeros_like(mine)
        if other_rank["signal"]:
            theirs[["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"].index(other_rank["signal"])] = 1.0
        return mine + theirs

    stop = StopRequest(("SIGTERM", "SIGUSR1"), 2, sum_over_ranks)
    with stop.handlers_installed():
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        other_rank["signal"] = "SIGUSR1"
        assert not stop.due(1)  # not a check step
        assert not stop.due(2, at_end=True)  # the run ends as done anyway
        assert stop.due(4) and stop.stopped_by == "SIGUSR1"  # another rank's signal stops this one too
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

    stop = StopRequest(("SIGTERM",), 1, sum_over_ranks)
    with stop.handlers_installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
        assert stop.received == "SIGTERM" and stop.times_received == 2
        assert stop.due(1) and stop.stopped_by == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    stop = StopRequest(("SIGTERM",), 10, None)  # one rank: its own record after every update, no collective
    with stop.handlers_installed():
        assert not stop.due(3)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.due(3) and stop.stopped_by == "SIGTERM"  # not only at multiples of 10

    # admin-ds train, once stopped, ignores them to its exit (a launcher's late SIGTERM to a rank that saved
    # and is closing must not turn its 75 into a kill).
    try:
        with stop_signals_caught(("SIGTERM",), until_exit_once_stopped=True):
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the test goes on
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
