"""`train --eval-bleu` on small real runs (training/validation_bleu.py): the BLEU and chrF of a validation row
equal `admin-ds evaluate` on that step's checkpoint, `best/` follows BLEU, --patience counts BLEU
validations, a resumed run keeps both, and two ranks sharing the lines score what one process scores.
Also `average-checkpoints --best N` and the one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import ds_config, rows, run_cases, train_argv

from admin_ds.checkpoints.exports import read_export, write_export
from admin_ds.checkpoints.zero import read_deepspeed_checkpoint
from admin_ds.cli import main as cli_main
from admin_ds.errors import UserError
from admin_ds.model import build_model
from admin_ds.training.config import TrainConfig
from admin_ds.training.validation_bleu import shard

from launch_util import REPO, launcher_env

STEPS, EVERY, PATIENCE = 200, 20, 2  # admin-tiny learns the toy task slowly enough that BLEU goes up and down
LINES, BEAM = 24, 2
BLEU_FLAGS = ("--eval-bleu", "--eval-bleu-lines", str(LINES), "--eval-bleu-beam", str(BEAM))
RUN_FLAGS = ("--arch", "admin-tiny", "--max-tokens", "1000", "--log-interval", str(EVERY), "--save-interval",
             str(EVERY), "--validate-interval", str(EVERY), "--keep-last", "100", "--lr", "1e-2", "--warmup-updates",
             "10", "--no-tensorboard", *BLEU_FLAGS, "--best-metric", "bleu", "--patience", str(PATIENCE))


def train(data: Path, save_dir: Path, steps: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(data), "--save-dir", str(save_dir),
                           "--max-steps", str(steps), *RUN_FLAGS], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def validations(save_dir: Path) -> list[dict]:
    return [row for row in rows(save_dir) if "valid_loss" in row]


def evaluate(capsys, checkpoint: Path, data: Path) -> dict:
    code = cli_main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "valid",
                     "--beam", str(BEAM), "--lines", str(LINES), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def expected_stop(bleus: list[tuple[int, float]], patience: int) -> tuple[int, int, bool]:
    """(the update the run ends at, the best update then, whether patience ended it), higher BLEU better."""
    best, best_step, since = -1.0, None, 0
    for step, bleu in bleus:
        if bleu > best:
            best, best_step, since = bleu, step, 0
        else:
            since += 1
            if since == patience:
                return step, best_step, True
    return bleus[-1][0], best_step, False


@pytest.fixture(scope="module")
def bleu_run(tmp_path_factory, synthetic_data):
    save = tmp_path_factory.mktemp("eval-bleu") / "run"
    return save, train(synthetic_data, save, STEPS)


@pytest.mark.slow
def test_bleu_rows_equal_evaluate_on_their_checkpoints(bleu_run, synthetic_data, capsys):
    save, proc = bleu_run
    found = validations(save)
    assert found and all({"bleu", "chrf", "best_bleu"} <= set(row) for row in found)
    assert any(row["bleu"] > 0.5 for row in found), [row["bleu"] for row in found]  # not all zero: a real check
    for row in found:
        result = evaluate(capsys, save / f"global_step{row['step']}", synthetic_data)
        assert result["text_from"] == "raw" and result["n_sentences"] == LINES
        assert abs(result["bleu"] - row["bleu"]) <= 0.01 and abs(result["chrf"] - row["chrf"]) <= 0.01, row
    assert proc.stderr.count("sacrebleu BLEU nrefs:1") == 1  # the signatures, logged once


@pytest.mark.slow
def test_best_and_patience_follow_bleu(bleu_run):
    save, _ = bleu_run
    found = validations(save)
    stop, best_step, patience_ran_out = expected_stop([(row["step"], row["bleu"]) for row in found], PATIENCE)
    assert found[-1]["step"] == stop and (save / "latest").read_text() == f"global_step{stop}"
    assert found[-1].get("early_stop", False) == patience_ran_out and (patience_ran_out or stop == STEPS)
    assert found[-1]["best_step"] == best_step
    best = json.loads((save / "best" / "config.json").read_text())["best"]
    assert best == {"step": best_step, "metric": "bleu", "value": max(row["bleu"] for row in found)}
    exported = read_export(save / "best").state_dict()
    at_best = read_deepspeed_checkpoint(save, f"global_step{best_step}")[0].state_dict()
    assert all(torch.equal(exported[key], at_best[key]) for key in at_best)


@pytest.mark.slow
def test_plot_draws_bleu_and_chrf(bleu_run, tmp_path, capsys):
    save, _ = bleu_run
    assert cli_main(["plot", str(save), "--out", str(tmp_path / "figs")]) == 0, capsys.readouterr().err
    for name in ("bleu.png", "chrf.png"):
        assert (tmp_path / "figs" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name


@pytest.mark.slow
def test_resume_keeps_best_bleu_and_patience_count(bleu_run, synthetic_data, tmp_path):
    save, _ = bleu_run
    found = validations(save)
    counted = [row for row in found if row["validations_since_best"] > 0]
    if not counted:
        pytest.skip("BLEU improved at every validation of this run: no patience count to carry over")
    resume_at = counted[0]["step"]  # a checkpoint whose patience count is not zero
    resumed = tmp_path / "resumed"
    train(synthetic_data, resumed, resume_at)
    train(synthetic_data, resumed, STEPS)
    again = validations(resumed)
    assert [{**row, "elapsed_s": 0} for row in again] == [{**row, "elapsed_s": 0} for row in found]
    assert (json.loads((resumed / "best" / "config.json").read_text())["best"]
            == json.loads((save / "best" / "config.json").read_text())["best"])


@pytest.mark.slow
def test_two_ranks_share_the_lines_and_score_what_one_process_scores(tmp_path, synthetic_data, capsys):
    """ZeRO-0 decodes with the engine's module, ZeRO-3 with a copy of the gathered weights."""
    cases = [{"name": f"z{stage}", "argv": train_argv(synthetic_data, tmp_path / f"z{stage}",
                                                      ds_config(tmp_path, stage, "fp32"), 8, "--save-interval", "4",
                                                      "--validate-interval", "4", "--lr", "5e-2", *BLEU_FLAGS)}
             for stage in (0, 3)]
    run_cases(tmp_path, cases, "two")
    for stage in (0, 3):
        save = tmp_path / f"z{stage}"
        found = validations(save)
        assert [row["step"] for row in found] == [4, 8]
        for row in found:
            result = evaluate(capsys, save / f"global_step{row['step']}", synthetic_data)
            assert abs(result["bleu"] - row["bleu"]) <= 0.01 and abs(result["chrf"] - row["chrf"]) <= 0.01, row


def test_lines_are_dealt_by_length_and_cover_every_line():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    shares = [shard(lengths, rank, 3) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(7))
    assert all(share == sorted(share) for share in shares)
    assert shares == [[1, 2, 4], [0, 6], [3, 5]]  # by length: 1 6 3 4 0 5 2, dealt 3 ways
    assert shard(lengths, 0, 1) == list(range(7))  # one rank: every line, in input order


def test_average_checkpoints_best_picks_the_best_steps(tmp_path, capsys):
    run = tmp_path / "run"
    bleus = {4: 10.0, 8: 30.0, 12: 20.0, 16: 25.0}
    losses = {4: 3.0, 8: 2.0, 12: 1.5, 16: 1.8}
    for step in (8, 12, 16):  # step 4's checkpoint was pruned; its row stays
        write_export(build_model("admin-tiny"), run / f"global_step{step}")
    lines = [{"step": step, "valid_loss": losses[step], "bleu": bleus[step]} for step in bleus]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [{"step": 2, "loss": 4.0}, *lines]))

    def picked(best: int, metric) -> list[str]:
        (run / "train_config.json").write_text(json.dumps({"train": {"best_metric": metric}}))
        code = cli_main(["average-checkpoints", "--save-dir", str(run), "--best", str(best), "--output",
                         str(tmp_path / "avg"), "--force"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return json.loads((tmp_path / "avg" / "config.json").read_text())["averaged_from"]

    assert [Path(p).name for p in picked(2, "bleu")] == ["global_step8", "global_step16"]
    assert [Path(p).name for p in picked(2, None)] == ["global_step12", "global_step16"]  # valid_loss
    (run / "train_config.json").write_text(json.dumps({"train": {"best_metric": "bleu"}}))
    assert cli_main(["average-checkpoints", "--save-dir", str(run), "--best", "4", "--output",
                     str(tmp_path / "avg4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--best 4 asks for more checkpoints than the 3" in err, err
    assert cli_main(["average-checkpoints", "--save-dir", str(run), "--best", "1", "--last", "1", "--output",
                     str(tmp_path / "avg5")]) == 2
    assert "one of --last N and --best N" in capsys.readouterr().err


def test_bad_eval_bleu_values():
    base = {"save_dir": "x", "max_steps": 1}
    for settings, message in (({"best_metric": "bleu"}, "--best-metric bleu needs --eval-bleu"),
                              ({"eval_bleu": True, "eval_bleu_lines": 0}, "--eval-bleu-lines must be at least 1"),
                              ({"eval_bleu": True, "eval_bleu_beam": 0}, "--eval-bleu-beam must be at least 1"),
                              ({"eval_bleu": True, "validate_interval": 0}, "--eval-bleu needs validation")):
        with pytest.raises(UserError, match=message):
            TrainConfig(**base, **settings).validate()


@pytest.mark.parametrize("problem", ["no raw text", "no such split", "best without eval"])
def test_eval_bleu_errors_before_anything_starts(tmp_path, synthetic_data, capsys, problem):
    data = synthetic_data
    extra = ["--eval-bleu"]
    if problem == "no raw text":  # a dataset prepared before meta.json recorded its raw text
        data = tmp_path / "old"
        shutil.copytree(synthetic_data, data)
        meta = json.loads((data / "meta.json").read_text())
        del meta["raw"]
        (data / "meta.json").write_text(json.dumps(meta))
    elif problem == "no such split":
        extra += ["--valid-split", "dev"]
    else:
        extra = ["--best-metric", "bleu"]
    save = tmp_path / "run"
    code = cli_main(["train", "--data", str(data), "--arch", "admin-tiny", "--save-dir", str(save), "--max-steps",
                     "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert {"no raw text": "records none", "no such split": "has none",
            "best without eval": "needs --eval-bleu"}[problem] in err
    assert not save.exists()  # nothing started
