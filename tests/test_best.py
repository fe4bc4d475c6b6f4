"""--best-metric valid_loss and --patience on small real two-rank runs (training/best.py): `best/` holds the
weights of the best validation so far, patience stops where the validation losses of a run without it say
it should, and a resumed run keeps the best value and the count. Bad values are one-line errors."""

import json
from pathlib import Path

import pytest
import torch
from test_train import ds_config, rows, run_cases, train_argv

from admin_ds.checkpoints.exports import read_export
from admin_ds.checkpoints.zero import read_deepspeed_checkpoint
from admin_ds.errors import UserError
from admin_ds.training.config import TrainConfig

STEPS, PATIENCE = 60, 3
EVERY = ("--validate-interval", "2", "--lr", "5e-2", "--warmup-updates", "2", "--log-interval", "10")
BEST = ("--best-metric", "valid_loss", "--patience", str(PATIENCE), "--save-interval", "2", "--keep-last", "100")


def validations(save_dir: Path) -> list[dict]:
    return [row for row in rows(save_dir) if "valid_loss" in row]


def expected_stop(losses: list[tuple[int, float]], patience: int) -> tuple[int, int]:
    """(the update patience ends the run at, the best update then), from a run's (step, valid_loss) pairs."""
    best, best_step, since = float("inf"), None, 0
    for step, loss in losses:
        if loss < best:
            best, best_step, since = loss, step, 0
        else:
            since += 1
            if since == patience:
                return step, best_step
    raise AssertionError(f"valid_loss kept improving for {len(losses)} validations: lengthen the run")


@pytest.mark.slow
def test_best_export_and_patience_and_their_resume(tmp_path, synthetic_data):
    config = ds_config(tmp_path, 2, "fp32")
    plain, patient = tmp_path / "plain", tmp_path / "patient"
    run_cases(tmp_path, [
        {"name": "plain", "argv": train_argv(synthetic_data, plain, config, STEPS, *EVERY)},
        {"name": "patient", "argv": train_argv(synthetic_data, patient, config, STEPS, *EVERY, *BEST)}], "first")
    stop, best_step = expected_stop([(r["step"], r["valid_loss"]) for r in validations(plain)], PATIENCE)

    assert (patient / "latest").read_text() == f"global_step{stop}"  # saved, then stopped
    last = validations(patient)[-1]
    assert (last["step"], last["best_step"], last["early_stop"]) == (stop, best_step, True)
    assert [r["valid_loss"] for r in validations(patient)] == [r["valid_loss"] for r in validations(plain)
                                                               if r["step"] <= stop]
    best_config = json.loads((patient / "best" / "config.json").read_text())
    assert best_config["best"]["step"] == best_step and (patient / "best" / "spm.model").is_file()
    exported = read_export(patient / "best").state_dict()
    at_best = read_deepspeed_checkpoint(patient, f"global_step{best_step}")[0].state_dict()
    assert all(torch.equal(exported[key], at_best[key]) for key in at_best)

    # Stopped one validation before patience runs out (the count is then PATIENCE - 1), then resumed.
    resumed = tmp_path / "resumed"
    run_cases(tmp_path, [
        {"name": "part", "argv": train_argv(synthetic_data, resumed, config, stop - 2, *EVERY, *BEST)},
        {"name": "rest", "argv": train_argv(synthetic_data, resumed, config, STEPS, *EVERY, *BEST)}], "resumed")
    assert (resumed / "latest").read_text() == f"global_step{stop}"
    assert len(validations(resumed)) == len(validations(patient)) and validations(resumed)[-1]["early_stop"]
    assert validations(resumed) == [{**row, "elapsed_s": r["elapsed_s"]} for row, r in
                                    zip(validations(patient), validations(resumed))]
    assert json.loads((resumed / "best" / "config.json").read_text())["best"]["step"] == best_step


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_a_bf16_best_export_holds_the_fp32_masters(tmp_path, synthetic_data, stage):
    """In bf16 the module holds bf16 working weights: `best/` is written from their fp32 masters, the same
    weights as the checkpoint of the best update read back (ZeRO-0: the optimizer's masters; ZeRO-2 and
    ZeRO-3: the shards, gathered parameter by parameter)."""
    run = tmp_path / "run"
    run_cases(tmp_path, [{"name": "bf16", "argv": train_argv(
        synthetic_data, run, ds_config(tmp_path, stage, "bf16"), 6, *EVERY, "--best-metric", "valid_loss",
        "--save-interval", "2", "--keep-last", "100")}], "bf16")
    best_step = json.loads((run / "best" / "config.json").read_text())["best"]["step"]
    exported = read_export(run / "best").state_dict()
    at_best = read_deepspeed_checkpoint(run, f"global_step{best_step}")[0].state_dict()
    assert all(torch.equal(exported[key], at_best[key]) for key in at_best)
    table = exported["src_embed.table.weight"]
    assert not torch.equal(table, table.bfloat16().float()), "fp32 masters, not the bf16 working weights"


def test_bad_best_and_patience_values():
    base = {"save_dir": "x", "max_steps": 1}
    with pytest.raises(UserError, match="--patience must be positive, got 0"):
        TrainConfig(**base, patience=0).validate()
    with pytest.raises(UserError, match="--patience needs validation, but --validate-interval is 0"):
        TrainConfig(**base, patience=2, validate_interval=0).validate()
    with pytest.raises(UserError, match="--best-metric must be one of valid_loss, bleu, got chrf"):
        TrainConfig(**base, best_metric="chrf").validate()
