"""The command line as users run it: the deepspeed launcher with --module, profile -> train --omega-profile,
and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
import torch

from admin_ds.cli import main as cli_main
from admin_ds.model import OmegaProfile

from launch_util import REPO, free_port, launcher_env, run_deepspeed

TINY = ["--arch", "admin-tiny", "--max-tokens", "300", "--log-interval", "2", "--warmup-updates", "4",
        "--no-tensorboard"]


@pytest.mark.slow
def test_deepspeed_launcher_module_two_ranks(tmp_path, synthetic_data):
    save = tmp_path / "run"
    run_deepspeed(["admin_ds.train", "--data", str(synthetic_data), "--save-dir", str(save), "--max-steps", "6",
                   "--save-interval", "3", "--deepspeed_config", str(REPO / "ds_configs" / "cpu_zero2_fp32.json"),
                   *TINY], module=True, master_port=free_port(), timeout=400)
    assert (save / "latest").read_text().strip() == "global_step6"
    assert sorted(p.name for p in save.glob("global_step*")) == ["global_step3", "global_step6"]
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == [2, 4, 6]
    assert any("valid_loss" in row for row in rows)
    run_config = json.loads((save / "train_config.json").read_text())
    assert run_config["world_size"] == 2
    assert run_config["data"] == str(synthetic_data.resolve())  # absolute, so readers find it from anywhere
    assert json.loads((save / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    profile = OmegaProfile.read(save / "omega.profile")
    assert len(profile.encoder) == 4 and profile.encoder[-1] > 1.2


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "admin_ds", *args], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_profile_then_train_with_the_file(tmp_path, synthetic_data):
    profile_path = tmp_path / "profile.ratio.init"
    proc = run_cli("profile", "--data", str(synthetic_data), "--arch", "admin-tiny", "--out", str(profile_path),
                   "--max-tokens", "300")
    assert proc.returncode == 0, proc.stderr
    given = OmegaProfile.read(profile_path)
    save = tmp_path / "run"
    proc = run_cli("train", "--data", str(synthetic_data), "--save-dir", str(save), "--max-steps", "2",
                   "--omega-profile", str(profile_path), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # omega.profile is read back from the weights: the file's values as fp32 parameters hold them.
    as_fp32 = [float(torch.tensor(v, dtype=torch.float32)) for v in given.encoder + given.decoder]
    written = OmegaProfile.read(save / "omega.profile")
    assert written.encoder + written.decoder == as_fp32
    assert "from " + str(profile_path) in proc.stderr


def one_line_error(capsys, argv, match):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and match in err, err


def test_train_bad_inputs(tmp_path, capsys, synthetic_data):
    save = str(tmp_path / "run")
    base = ["train", "--save-dir", save, "--max-steps", "2", *TINY]
    one_line_error(capsys, [*base, "--data", str(tmp_path / "missing")], "does not exist")
    one_line_error(capsys, ["train", "--data", str(synthetic_data), "--save-dir", save, *TINY], "--max-steps")
    for flag, value, match in [("--stop-signals", "SIGKILL", "is not one of SIGTERM"),
                               ("--stop-check-interval", "0", "must be positive"),
                               ("--lock-stale-minutes", "0", "must be positive")]:
        one_line_error(capsys, [*base, "--data", str(synthetic_data), flag, value], match)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--deepspeed_config", str(bad_json)],
                   "not valid JSON")
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--deepspeed_config", str(tmp_path / "no.json")],
                   "not found")
    wrong = tmp_path / "wrong.profile"
    OmegaProfile([1.0, 1.2], [1.0, 1.1, 1.2]).write(wrong)
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--omega-profile", str(wrong)], "needs 4 and 6")
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--nhead", "5"], "not divisible")
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--arch", "admin-huge"], "unknown preset")
    one_line_error(capsys, [*base, "--data", str(synthetic_data), "--residual", "post-ln", "--omega-profile",
                            str(wrong)], "needs --residual admin")
    assert not (tmp_path / "run").exists()


def test_profile_bad_inputs(tmp_path, capsys, synthetic_data):
    one_line_error(capsys, ["profile", "--data", str(synthetic_data), "--arch", "admin-tiny", "--residual", "pre-ln",
                            "--out", str(tmp_path / "p")], "has none")
    assert not (tmp_path / "p").exists()
