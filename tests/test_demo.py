"""`admin-ds demo`, shortened: every stage runs and leaves its output where it says."""

import json
import subprocess
import sys

import pytest
import sacrebleu

from launch_util import launcher_env


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "demo", "--workdir", str(workdir), "--max-steps", "30",
                           "--test-lines", "20", "--beam", "2"], cwd=tmp_path, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test BLEU" in proc.stdout and "[5/5] done" in proc.stdout
    scores = json.loads((workdir / "test_scores.json").read_text())
    hypotheses = (workdir / "test.hyp").read_text().splitlines()
    references = (workdir / "text" / "test.tgt").read_text().splitlines()[:20]
    assert len(hypotheses) == 20
    # The reported scores are sacrebleu's on the written translations, and the summary says the same.
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score, abs=1e-9)
    assert f"test BLEU {scores['bleu']:.2f}" in proc.stdout and "nrefs:1" in scores["signature"]
    assert (workdir / "run" / "global_step30").is_dir() and (workdir / "run" / "omega.profile").is_file()
    assert (workdir / "plain" / "model.safetensors").is_file()
    config = json.loads((workdir / "plain" / "config.json").read_text())
    assert config["num_encoder_layers"] == 6
    # A second run refuses to overwrite the first.
    again = subprocess.run([sys.executable, "-m", "admin_ds", "demo", "--workdir", str(workdir)], cwd=tmp_path,
                           env=launcher_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr


def test_demo_rejects_incomplete_data(tmp_path, capsys):
    from admin_ds.cli import main

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.de").write_text("hallo\n")
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--data", str(tmp_path / "raw"),
                 "--source-lang", "de", "--target-lang", "en"]) == 2
    assert "missing" in capsys.readouterr().err
