"""The engine package's edges: the installed DeepSpeed checked against the tested range, and the
rendezvous variables computed without touching the environment."""

import logging

import deepspeed
import pytest

from admin_ds.training.engine import internals
from admin_ds.training.rendezvous import RENDEZVOUS_VARIABLES, fill_rendezvous_env


@pytest.mark.parametrize("version", ["0.19.8", "0.19.12", "0.19.8+cpu"])
def test_a_deepspeed_in_the_tested_range_passes_silently(version):
    assert internals.untested_deepspeed(version) is None


@pytest.mark.parametrize("version", ["0.19.7", "0.20.0", "1.0.0", "0.18.9+abc", "dev"])
def test_a_deepspeed_outside_the_tested_range_is_named_in_one_line(version):
    warning = internals.untested_deepspeed(version)
    assert warning is not None and f"DeepSpeed {version} is outside the tested range >=0.19.8,<0.20.0" in warning
    assert "\n" not in warning


def test_the_start_up_check_warns_and_carries_on(monkeypatch, caplog):
    monkeypatch.setattr(deepspeed, "__version__", "0.21.0")
    with caplog.at_level(logging.WARNING, logger="admin_ds"):
        warning = internals.check_deepspeed_version()
    assert warning is not None and warning in caplog.text
    monkeypatch.setattr(deepspeed, "__version__", "0.19.8")
    caplog.clear()
    assert internals.check_deepspeed_version() is None and caplog.text == ""


def test_a_bare_process_gets_a_one_rank_group_and_the_given_env_is_untouched():
    env = {"PATH": "/bin"}
    added = fill_rendezvous_env(env)
    assert env == {"PATH": "/bin"}
    assert set(added) == set(RENDEZVOUS_VARIABLES)
    named = (added["RANK"], added["WORLD_SIZE"], added["LOCAL_RANK"], added["MASTER_ADDR"])
    assert named == ("0", "1", "0", "127.0.0.1")
    assert 0 < int(added["MASTER_PORT"]) < 65536


def test_srun_and_launcher_environments():
    srun = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "MASTER_ADDR": "node7"}
    assert fill_rendezvous_env(srun) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}
    launcher = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert fill_rendezvous_env(launcher) == {}


def test_joining_without_the_rendezvous_variables_names_them(monkeypatch):
    """The library never writes os.environ: a caller that skipped the entry point's fill is told what is missing."""
    from admin_ds.errors import UserError
    from admin_ds.training.engine import init_distributed

    for name in ("RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match=r"RANK.*MASTER_PORT not set"):
        init_distributed()
