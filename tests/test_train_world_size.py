"""`admin-ds train` resumed on another number of ranks, 2 -> 1 -> 2, at ZeRO-2 and ZeRO-3, with real DeepSpeed
over gloo: through DeepSpeed's universal checkpoint, weights, Adam's moments and the learning rate come back
exactly, and over the epoch every training pair is seen once."""

import shutil
import subprocess
import sys

import pytest
import torch
from test_pickles import craft
from test_train import ds_config, rows, train_argv

from admin_ds.checkpoints import pickles
from admin_ds.checkpoints.rundir import UNIVERSAL
from admin_ds.data import ParallelDataset
from admin_ds.errors import UserError

from launch_util import REPO, free_port, launcher_env, run_torchrun


def run_phase(tmp, name: str, ranks: int, cases: list[dict]) -> dict:
    """The cases in one launch of ``ranks`` processes; returns {case-rankR: recorded state}."""
    import json

    out = tmp / f"out-{name}"
    out.mkdir()
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(cases))
    proc = run_torchrun(["tests/scripts/world_size_cases.py", str(spec), str(out)], num_ranks=ranks)
    states = {f"{case['name']}-rank{rank}": torch.load(out / f"{case['name']}-rank{rank}.pt")
              for case in cases for rank in range(ranks)}
    return {**states, "log": proc.stdout + proc.stderr}


def assert_same_state(resumed: dict, saved: dict, where: str) -> None:
    for key in ("fp32", "exp_avg", "exp_avg_sq"):
        assert resumed[key].keys() == saved[key].keys()
        for name, tensor in saved[key].items():
            assert tensor is not None, f"{where}: no {key} for {name}"
            assert torch.equal(resumed[key][name], tensor), f"{where}: {key} of {name} differs"
    assert resumed["lr"] == saved["lr"] and resumed["step"] == saved["step"], where


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_resume_two_ranks_on_one_then_two_again(tmp_path, synthetic_data, stage):
    config = ds_config(tmp_path, stage, "fp32")
    run = tmp_path / "run"

    def argv(steps, *extra):
        return train_argv(synthetic_data, run, config, steps, "--max-tokens", "1200", *extra)

    first = run_phase(tmp_path, "first", 2, [{"name": "first", "argv": argv(4)}])
    second = run_phase(tmp_path, "second", 1, [{"name": "second", "argv": argv(9)}])
    assert "global_step4 was saved by 2 rank(s) and this run has 1: resuming through" in second["log"]
    assert not (run / UNIVERSAL).exists(), "the save at step 9 should have removed the conversion of step 4"
    assert_same_state(second["second-rank0"]["resumed"], first["first-rank0"]["final"], "2 ranks -> 1")
    end_of_epoch = argv(1000, "--max-epochs", "1")
    if stage == 2:
        check_crafted_universal_file_is_refused(run, end_of_epoch, tmp_path)
    third = run_phase(tmp_path, "third", 2, [{"name": "third", "argv": end_of_epoch}])
    assert "global_step9 was saved by 1 rank(s) and this run has 2: resuming through" in third["log"]
    for rank in (0, 1):
        assert_same_state(third[f"third-rank{rank}"]["resumed"], second["second-rank0"]["final"],
                          f"1 rank -> 2, rank {rank}")

    # Training went on after each resume, and over epoch 1 every pair was trained on exactly once.
    final, resumed = third["third-rank0"]["final"], third["third-rank0"]["resumed"]
    assert not torch.equal(final["fp32"]["src_embed.table.weight"], resumed["fp32"]["src_embed.table.weight"])
    assert third["third-rank0"]["epoch"] == 2
    seen = [pair for state in (first["first-rank0"], first["first-rank1"], second["second-rank0"],
                               third["third-rank0"], third["third-rank1"]) for pair in state["seen"]]
    assert sorted(seen) == list(range(len(ParallelDataset.load(synthetic_data, "train"))))
    logged = [row for row in rows(run) if "loss" in row]
    assert [row["step"] for row in logged] == list(range(1, len(logged) + 1)), "steps lost or repeated"
    assert max(row["loss"] for row in logged[4:6]) < logged[0]["loss"], "the loss went back to where it started"


def check_crafted_universal_file_is_refused(run, argv: list[str], tmp) -> None:
    """A crafted pickle in place of a file of the universal form: refused before any rank enters DeepSpeed's
    load (ZeRO-2 ranks read only their own parameters' files: without the check rank 1 waited in a
    collective for rank 0, which had stopped), and its payload never runs."""
    from admin_ds.training.engine import convert_to_universal

    universal = run / UNIVERSAL / "global_step9"
    convert_to_universal(run / "global_step9", universal)  # as rank 0 of a 2-rank resume would
    marker = tmp / "payload-ran"
    craft(universal / "zero" / "src_embed.table.weight" / "fp32.pt", marker)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "admin_ds.train", *argv], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not marker.exists(), proc.stderr[-3000:]
    refusals = [line for line in proc.stderr.splitlines() if "admin-ds train: error: refusing to load" in line]
    # torchrun stops the other rank once one has exited, so one or both say it; what matters is that no rank
    # stayed inside a collective (the run ended well within the timeout) and nothing ran.
    assert refusals and all("posix.system" in line for line in refusals), proc.stderr[-3000:]
    shutil.rmtree(universal)


def test_deepspeeds_universal_converter_reads_weights_only(tmp_path):
    """ds_to_universal unpickles with weights_only=False itself; ours runs it with every load weights-only."""
    from admin_ds.training.engine import convert_to_universal

    tag_dir = tmp_path / "global_step2"
    tag_dir.mkdir()
    marker = tmp_path / "payload-ran"
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        craft(tag_dir / name, marker)
    with pytest.raises(UserError, match="refusing to load .* posix.system"):
        convert_to_universal(tag_dir, tmp_path / "universal" / "global_step2")
    assert not marker.exists()
    assert torch.load is pickles._TORCH_LOAD, "torch.load was left replaced"
