"""`admin-ds plot` on real files: a training run's metrics.jsonl and omega.profile, the reference's profile
file, and a checkpoint; and one-line errors for files it cannot read."""

import subprocess
import sys
from pathlib import Path

import pytest

from admin_ds.checkpoints.exports import write_export
from admin_ds.cli import main as cli_main
from admin_ds.model import build_model

from launch_util import REPO, launcher_env

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFERENCE_PROFILE = SHARED_DATA / "reference" / "admin-100-100-wmt14-en-de.profile.ratio.init"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_data):
    save = tmp_path_factory.mktemp("plot") / "run"
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(synthetic_data), "--arch",
                           "admin-tiny", "--save-dir", str(save), "--max-steps", "8", "--max-tokens", "300",
                           "--log-interval", "2", "--save-interval", "4", "--validate-interval", "4",
                           "--warmup-updates", "2", "--no-tensorboard"], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save


@pytest.mark.slow
def test_plot_every_kind_of_input(trained_run, tmp_path, capsys):
    export = tmp_path / "export"
    write_export(build_model("admin-tiny"), export)
    inputs = [trained_run, trained_run / "metrics.jsonl", export]
    if REFERENCE_PROFILE.is_file():
        inputs.append(REFERENCE_PROFILE)
    assert cli_main(["plot", *map(str, inputs), "--out", str(tmp_path / "figs")]) == 0
    written = {p.name: p.read_bytes() for p in (tmp_path / "figs").iterdir()}
    assert set(written) == {"loss.png", "omega.png", "tokens_per_s.png"}  # CPU fp32: no loss scale
    for name, data in written.items():
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert capsys.readouterr().out.count("wrote ") == 3


def test_plot_refuses_what_it_cannot_read(tmp_path, capsys):
    garbage = tmp_path / "metrics.jsonl"
    garbage.write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    profile = tmp_path / "bad.profile"
    profile.write_text("1 1.0\n3 2.0\n")
    for inputs, fragment in (([garbage], "metrics.jsonl:2"), ([profile], "out of order"),
                             ([tmp_path / "missing"], "no such file"),
                             ([tmp_path / "empty.jsonl"], "nothing to plot")):
        if fragment == "nothing to plot":
            inputs[0].write_text("")
        assert cli_main(["plot", *map(str, inputs), "--out", str(tmp_path / "figs")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").iterdir())
