"""No stranger's code runs: a crafted pickle put in place of any file admin-ds reads is refused
with one line and exit 2, and its payload never runs; real checkpoints still load, resume included."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from admin_ds.checkpoints.pickles import DeepSpeedRecord, load_weights_only
from admin_ds.errors import UserError
from admin_ds.training.state import rng_state, seed_everything, set_rng_state

from launch_util import REPO, launcher_env

TINY = ["--arch", "admin-tiny", "--max-tokens", "300", "--warmup-updates", "2", "--no-tensorboard",
        "--max-steps", "2", "--save-interval", "2"]


class Payload:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path, marker) -> None:
    torch.save({"module": {"w": torch.zeros(1)}, "trap": Payload(marker)}, path)


def admin_ds(*args):
    return subprocess.run([sys.executable, "-m", "admin_ds", *map(str, args)], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)


def refused(proc, marker) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "error: refusing to load" in last and "posix.system" in last, last
    assert not marker.exists(), "the payload ran"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data):
    """Two finished 2-step runs: ZeRO-0 (the model states hold the weights) and ZeRO-2 (optimizer shards)."""
    root = tmp_path_factory.mktemp("pickles")
    made = {}
    for name, config in (("zero0", "cpu_fp32.json"), ("zero2", "cpu_zero2_fp32.json")):
        proc = admin_ds("train", "--data", synthetic_data, "--save-dir", root / name,
                        "--deepspeed_config", REPO / "ds_configs" / config, *TINY)
        assert proc.returncode == 0, proc.stderr[-3000:]
        made[name] = root / name
    return made


CASES = {
    # (run, file replaced in global_step2, command after the run directory)
    "model states, convert": ("zero0", "mp_rank_00_model_states.pt", "convert"),
    "optimizer shard, convert": ("zero2", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "convert"),
    "model states, average": ("zero0", "mp_rank_00_model_states.pt", "average"),
    "model states, translate": ("zero0", "mp_rank_00_model_states.pt", "translate"),
    "model states, resume": ("zero0", "mp_rank_00_model_states.pt", "resume"),
    "optimizer shard, resume": ("zero2", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "resume"),
    "rng state, resume": ("zero2", "rng_state_rank0.pt", "resume"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_crafted_checkpoint_file_is_refused_and_never_runs(case, runs, tmp_path, synthetic_data):
    run, file, command = CASES[case]
    save = tmp_path / "run"
    shutil.copytree(runs[run], save)
    marker = tmp_path / "payload-ran"
    craft(save / "global_step2" / file, marker)
    if command == "convert":
        proc = admin_ds("convert", save, tmp_path / "out")
    elif command == "average":
        proc = admin_ds("average-checkpoints", "--inputs", save / "global_step2", "--output", tmp_path / "out")
    elif command == "translate":
        (tmp_path / "in.txt").write_text("a b c\n")
        proc = admin_ds("translate", "--checkpoint", save, "--input", tmp_path / "in.txt", "--output",
                        tmp_path / "out.txt", "--device", "cpu")
    else:  # the same command again, longer: it resumes from global_step2
        config = "cpu_fp32.json" if run == "zero0" else "cpu_zero2_fp32.json"
        proc = admin_ds("train", "--data", synthetic_data, "--save-dir", save, "--deepspeed_config",
                        REPO / "ds_configs" / config, *TINY[:-4], "--max-steps", "4", "--save-interval", "4")
    refused(proc, marker)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.txt").exists()
    assert not (save / "global_step4").exists()


@pytest.mark.slow
def test_a_crafted_state_dict_file_is_refused(runs, tmp_path):
    marker = tmp_path / "payload-ran"
    craft(tmp_path / "pytorch_model.bin", marker)
    proc = admin_ds("convert", tmp_path / "pytorch_model.bin", tmp_path / "out", "--config",
                    runs["zero0"] / "train_config.json")
    refused(proc, marker)


@pytest.mark.slow
def test_real_checkpoints_still_load_and_resume(runs, tmp_path, synthetic_data):
    for name in ("zero0", "zero2"):
        proc = admin_ds("convert", runs[name], tmp_path / f"{name}-export")
        assert proc.returncode == 0, proc.stderr[-3000:]
    save = tmp_path / "resumed"
    shutil.copytree(runs["zero2"], save)
    proc = admin_ds("train", "--data", synthetic_data, "--save-dir", save, "--deepspeed_config",
                    REPO / "ds_configs" / "cpu_zero2_fp32.json", *TINY[:-4], "--max-steps", "4", "--save-interval", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and (save / "global_step4").is_dir()


def test_deepspeed_objects_become_inert_records(tmp_path):
    # the pickle names DeepSpeed's class; what comes back is a record of the call, with no deepspeed import
    path = tmp_path / "shard.pt"
    code = ("import torch; from deepspeed.runtime.zero.config import ZeroStageEnum; "
            f"torch.save({{'zero_stage': ZeroStageEnum(2)}}, {str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=launcher_env(), capture_output=True)
    stage = load_weights_only(path)["zero_stage"]
    assert isinstance(stage, DeepSpeedRecord) and int(stage) == 2


def test_rng_state_is_tensors_and_numbers_and_round_trips(tmp_path):
    import random

    import numpy as np

    seed_everything(3)
    random.gauss(0, 1)  # a cached Gaussian is part of Python's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(99)
    set_rng_state(load_weights_only(tmp_path / "rng.pt"))  # weights-only: it holds no pickled objects
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    with pytest.raises(UserError, match="not an admin-ds RNG state"):
        set_rng_state({"torch": torch.get_rng_state()})


def test_deepspeed_loads_go_through_the_one_weights_only_loader(tmp_path):
    """During a DeepSpeed load (resume, universal conversion) DeepSpeed's own loader, which passes
    weights_only=False, reads weights-only: a crafted file is refused unrun, DeepSpeed's own classes come
    back real, and torch.load is torch's own again afterwards."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from admin_ds.training.engine.internals import deepspeed_loads_weights_only

    marker, crafted, shard = tmp_path / "payload-ran", tmp_path / "crafted.pt", tmp_path / "shard.pt"
    craft(crafted, marker)
    torch.save({"zero_stage": ZeroStageEnum(2), "w": torch.ones(2)}, shard)
    real_load, deepspeed_loader = torch.load, TorchCheckpointEngine()
    with deepspeed_loads_weights_only():
        with pytest.raises(UserError, match="refusing to load .*posix.system"):
            deepspeed_loader.load(str(crafted), map_location="cpu")
        loaded = deepspeed_loader.load(str(shard), map_location="cpu")
    assert not marker.exists(), "the payload ran"
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and torch.equal(loaded["w"], torch.ones(2))
    assert torch.load is real_load
