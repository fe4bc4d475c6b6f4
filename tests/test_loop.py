"""The training loop's own logic: epochs, the loss sums, and a real single-process run by epochs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from admin_ds.data import BatchIterator, ParallelDataset
from admin_ds.training.loop import TokenSums, epoch_batches

from launch_util import REPO, launcher_env


def test_two_epochs_see_every_pair_twice_in_two_orders():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=200)
    dataset = ParallelDataset.from_lists([list(range(4, 4 + n)) for n in lengths],
                                         [list(range(4, 4 + n)) for n in lengths[::-1]])
    data = BatchIterator.build(dataset, max_tokens=64, seed=3)
    epochs: dict[int, list[int]] = {}
    for batch in epoch_batches(data, lambda: data.epoch > 2):  # what Trainer.finished does for --max-epochs 2
        epochs.setdefault(data.epoch, []).extend(batch.ids.tolist())
    assert sorted(epochs) == [1, 2]
    for ids in epochs.values():
        assert sorted(ids) == list(range(len(dataset)))  # every pair exactly once per epoch
    assert epochs[1] != epochs[2]  # reshuffled: the second epoch is not a replay of the first
    assert data.epoch == 3


def test_token_sums_are_per_token_and_start_again_after_reading():
    sums = TokenSums(torch.device("cpu"))
    sums.add(torch.tensor(6.0), torch.tensor(3.0), 4)
    sums.add(torch.tensor(2.0), torch.tensor(1.0), 4)
    assert sums.totals() == {"loss": 1.0, "nll": 0.5, "tokens": 8.0, "flops": 0.0}
    sums.add(torch.tensor(1.0), torch.tensor(1.0), 2)
    assert sums.totals() == {"loss": 0.5, "nll": 0.5, "tokens": 2.0, "flops": 0.0}


@pytest.mark.slow
def test_max_epochs_two_trains_two_epochs(tmp_path, synthetic_data):
    save = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(synthetic_data), "--arch",
                           "admin-tiny", "--save-dir", str(save), "--max-epochs", "2", "--max-tokens", "600",
                           "--log-interval", "1", "--save-interval", "100000", "--validate-interval", "0",
                           "--no-tensorboard"], cwd=REPO, env=launcher_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_epoch = len(BatchIterator.build(ParallelDataset.load(synthetic_data, "train"), 600, seed=1))
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert (save / "latest").read_text().strip() == f"global_step{2 * per_epoch}"
    assert [row["step"] for row in rows] == list(range(1, 2 * per_epoch + 1))
    # The epoch a row reports is the sampler's at logging time: the last update of epoch 1 is logged
    # before the sampler moves on, so rows 1..per_epoch say 1 and the rest say 2.
    assert [row["epoch"] for row in rows] == [1] * per_epoch + [2] * per_epoch


def test_resume_refuses_data_of_another_vocabulary(tmp_path, synthetic_data):
    from admin_ds.checkpoints.rundir import write_run_config
    from admin_ds.data import load_meta
    from admin_ds.errors import UserError
    from admin_ds.model import preset_config
    from admin_ds.training.config import ModelChoice
    from admin_ds.training.setup import resolve_model_config

    info = load_meta(synthetic_data)
    (tmp_path / "latest").write_text("global_step3")
    write_run_config(tmp_path, preset_config("admin-tiny").to_dict(), {}, synthetic_data, 1, 1)  # vocab 64
    with pytest.raises(UserError, match="vocabularies 64/64"):
        resolve_model_config(ModelChoice("admin-tiny"), tmp_path, info, resume=True)
    fitting = ModelChoice("admin-tiny").resolve(info)
    write_run_config(tmp_path, fitting.to_dict(), {}, synthetic_data, 1, 1)
    assert resolve_model_config(ModelChoice("admin-6-6"), tmp_path, info, resume=True) == fitting


def test_collate_refuses_ids_outside_the_datasets_vocabulary():
    from admin_ds.data import collate
    from admin_ds.errors import UserError

    pairs = [(np.array([4, 5]), np.array([6])), (np.array([7]), np.array([8, 99]))]
    collate(pairs, [0, 1], vocab_sizes=(100, 100))
    with pytest.raises(UserError, match="target sentence holds id 99"):
        collate(pairs, [0, 1], vocab_sizes=(100, 99))
