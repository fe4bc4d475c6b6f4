"""`admin-ds train` with two real ranks over gloo: ZeRO 1-3 (+zero.Init), fp32 and bf16, exact resume,
activation checkpointing, and the command-line entry points."""

import json
from pathlib import Path

import pytest
import torch

import admin_ds
from admin_ds.checkpoints.zero import model_states_file
from admin_ds.model import OmegaProfile

from launch_util import REPO, run_torchrun

CPU_CONFIGS = REPO / "ds_configs"


def ds_config(tmp: Path, stage: int, precision: str) -> Path:
    path = tmp / f"ds_zero{stage}_{precision}.json"
    zero = {"stage": stage}
    if stage == 3:
        # DeepSpeed keeps parameters under 100k elements whole on every rank; admin-tiny's are all that
        # small, so without this ZeRO-3 would partition nothing (and gather nothing) here.
        zero["stage3_param_persistence_threshold"] = 0
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero,
              "bf16": {"enabled": precision == "bf16"}}
    path.write_text(json.dumps(config))
    return path


def train_argv(data: Path, save_dir: Path, config: Path, steps: int, *extra: str) -> list[str]:
    return ["--data", str(data), "--arch", "admin-tiny", "--save-dir", str(save_dir), "--max-steps", str(steps),
            "--max-tokens", "300", "--log-interval", "1", "--save-interval", "100", "--warmup-updates", "5",
            "--lr", "2e-3", "--no-tensorboard", "--validate-interval", "0", "--deepspeed_config", str(config), *extra]


def rows(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def run_cases(tmp: Path, cases: list[dict], name: str) -> Path:
    out = tmp / f"out-{name}"
    out.mkdir()
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(cases))
    run_torchrun(["tests/scripts/train_cases.py", str(spec), str(out)])
    return out


def weights(out: Path, name: str, rank: int = 0) -> dict:
    return torch.load(out / f"{name}-rank{rank}.pt")


TRAIN_CASES = [(1, "fp32", False), (2, "fp32", False), (3, "fp32", False), (3, "fp32", True),
               (1, "bf16", False), (2, "bf16", False), (3, "bf16", True)]


def case_name(stage, precision, zero_init):
    return f"z{stage}{'i' if zero_init else ''}-{precision}"


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory, synthetic_data):
    tmp = tmp_path_factory.mktemp("train")
    cases = [{"name": case_name(*case), "argv": train_argv(synthetic_data, tmp / case_name(*case),
                                                           ds_config(tmp, case[0], case[1]), 30,
                                                           *(["--zero-init"] if case[2] else []))}
             for case in TRAIN_CASES]
    # Activation checkpointing on and off, dropout on, same seed: same losses and weights.
    config = ds_config(tmp, 2, "fp32")
    cases += [{"name": f"ckpt{k}", "argv": train_argv(synthetic_data, tmp / f"ckpt{k}", config, 5,
                                                      "--checkpoint-activations", str(k))} for k in (0, 1)]
    # Gradient accumulation from the DeepSpeed config, and pruning to the newest --keep-last checkpoints.
    accumulate = tmp / "ds_accumulate.json"
    accumulate.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
                                      "zero_optimization": {"stage": 2}}))
    cases.append({"name": "accumulate", "argv": train_argv(synthetic_data, tmp / "accumulate", accumulate, 4,
                                                           "--save-interval", "1", "--keep-last", "2")})
    return tmp, run_cases(tmp, cases, "train")


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAIN_CASES, ids=[case_name(*c) for c in TRAIN_CASES])
def test_two_rank_training(training_runs, case):
    tmp, out = training_runs
    name = case_name(*case)
    losses = [row["loss"] for row in rows(tmp / name) if "loss" in row]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, f"loss did not decrease: {first:.3f} -> {last:.3f}"
    rank0, rank1 = weights(out, name, 0), weights(out, name, 1)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
    omega = rank0["encoder.layers.1.ffn_residual.omega"]
    assert omega.mean() > 1.2, "ω should have been profiled, not left at 1"
    assert (tmp / name / "omega.profile").is_file() and (tmp / name / "latest").is_file()
    row = rows(tmp / name)[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in row


@pytest.mark.slow
def test_activation_checkpointing_same_training(training_runs):
    tmp, out = training_runs
    plain = [row["loss"] for row in rows(tmp / "ckpt0")]
    checkpointed = [row["loss"] for row in rows(tmp / "ckpt1")]
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    a, b = weights(out, "ckpt0"), weights(out, "ckpt1")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_and_keep_last(training_runs):
    tmp, _ = training_runs
    run = tmp / "accumulate"
    assert [row["step"] for row in rows(run)] == [1, 2, 3, 4]
    assert sorted(p.name for p in run.glob("global_step*")) == ["global_step3", "global_step4"]
    states = torch.load(run / "global_step4" / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["step"] == 4
    assert states["data"]["position"] == 8, "two micro-batches per optimizer step"


@pytest.mark.slow
def test_runs_under_srun_environment(tmp_path, synthetic_data):
    """srun starts one process per task with SLURM_* set and no RANK: the trainer maps them itself."""
    import subprocess
    import sys

    from launch_util import free_port, launcher_env

    port = str(free_port())
    procs = []
    for task in range(2):
        env = {k: v for k, v in launcher_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(task), SLURM_NTASKS="2", SLURM_LOCALID=str(task), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        argv = train_argv(synthetic_data, tmp_path / "run", ds_config(tmp_path, 2, "fp32"), 2)
        procs.append(subprocess.Popen([sys.executable, "-m", "admin_ds.train", *argv],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][1][-3000:]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["world_size"] == 2
    assert (tmp_path / "run" / "latest").read_text().strip() == "global_step2"


@pytest.mark.slow
@pytest.mark.parametrize("stage, precision", [(2, "fp32"), (3, "fp32"), (0, "bf16")])
def test_exact_resume(tmp_path_factory, synthetic_data, stage, precision):
    """6 steps straight == 3 steps, save, a new process, load, 3 more: bit-identical losses and weights.
    ZeRO-0 bf16 (ds_configs/cpu_bf16.json, the one-process CPU configuration) keeps its fp32 masters in
    DeepSpeed's unfused optimizer, not in ZeRO partitions: its resume is checked too."""
    tmp = tmp_path_factory.mktemp(f"resume{stage}{precision}")
    config = ds_config(tmp, stage, precision)
    extra = ["--save-interval", "3", "--dropout", "0.1"]
    straight = run_cases(tmp, [{"name": "straight", "argv": train_argv(synthetic_data, tmp / "a", config, 6, *extra)}],
                         "straight")
    first = run_cases(tmp, [{"name": "first", "argv": train_argv(synthetic_data, tmp / "b", config, 3, *extra)}],
                      "first")
    assert (tmp / "b" / "latest").read_text().strip() == "global_step3"
    second = run_cases(tmp, [{"name": "second", "argv": train_argv(synthetic_data, tmp / "b", config, 6, *extra)}],
                       "second")
    losses_straight = [row["loss"] for row in rows(tmp / "a")]
    losses_resumed = [row["loss"] for row in rows(tmp / "b")]
    assert len(losses_straight) == 6
    assert losses_resumed == losses_straight
    a, b = weights(straight, "straight"), weights(second, "second")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert not torch.equal(weights(first, "first")["src_embed.table.weight"], a["src_embed.table.weight"])


@pytest.mark.slow
def test_a_half_precision_zero0_checkpoint_loads_its_fp32_masters(tmp_path, synthetic_data):
    """ZeRO-0 in bf16 saves its bf16 working weights as the module and the fp32 masters only in the optimizer
    state: load_model reads the masters, with ω in the optimizer's own group or not."""
    config = ds_config(tmp_path, 0, "bf16")
    cases = [{"name": name, "save_masters": True,
              "argv": train_argv(synthetic_data, tmp_path / name, config, 4, "--save-interval", "4", *extra)}
             for name, extra in (("one-group", []), ("omega-group", ["--omega-lr-scale", "0.5"]))]
    out = run_cases(tmp_path, cases, "masters")
    for name in ("one-group", "omega-group"):
        masters = torch.load(out / f"{name}-rank0-masters.pt")
        loaded = dict(admin_ds.load_model(tmp_path / name).named_parameters())
        assert loaded.keys() == masters.keys()
        for key, master in masters.items():
            assert torch.equal(loaded[key].detach(), master), f"{name}: {key} is not its fp32 master"
        table = masters["src_embed.table.weight"]
        assert not torch.equal(table, table.bfloat16().float()), "the masters must hold more than bf16 values"


@pytest.mark.slow
def test_zero3_resume_reads_partitioned_omega_whole(tmp_path, synthetic_data):
    """ω partitioned over two ranks (persistence threshold 0): the profile read after a resume, and the one
    the checkpoint carries, equal the one before it; the old reader took the mean of a rank's shard."""
    config = ds_config(tmp_path, 3, "fp32")
    argv = train_argv(synthetic_data, tmp_path / "run", config, 3, "--save-interval", "3")
    first = run_cases(tmp_path, [{"name": "first", "argv": argv}], "first")
    again = run_cases(tmp_path, [{"name": "again", "argv": argv}], "again")  # resumes at 3, trains nothing
    d_model = 32  # admin-tiny
    for rank in (0, 1):
        before = json.loads((first / f"first-rank{rank}.json").read_text())
        after = json.loads((again / f"again-rank{rank}.json").read_text())
        assert 0 < before["omega_local_numel"] < d_model  # each rank holds only its piece of ω
        assert before["omega"][1] > 1.0  # profiled, not the initial 1
        assert after["omega"] == before["omega"]
    assert saved_omega(tmp_path / "run" / "global_step3") == before["omega"]
    # A resumed run that trains on writes, at its next save, ω as the (partitioned) weights hold it then.
    argv = train_argv(synthetic_data, tmp_path / "run", config, 5, "--save-interval", "5")
    more = json.loads((run_cases(tmp_path, [{"name": "more", "argv": argv}], "more") / "more-rank0.json").read_text())
    assert more["omega"] != before["omega"]  # trained on
    assert saved_omega(tmp_path / "run" / "global_step5") == more["omega"]


def saved_omega(tag_dir: Path) -> list[float]:
    """The ω text a checkpoint's client_state carries, as one list (encoder then decoder)."""
    states = torch.load(model_states_file(tag_dir), weights_only=False)
    path = tag_dir.parent / f"{tag_dir.name}.profile"
    path.write_text(states["omega"])
    profile = OmegaProfile.read(path)
    return profile.encoder + profile.decoder


def test_activation_checkpointing_from_the_deepspeed_config():
    from admin_ds.model import preset_config
    from admin_ds.training.setup import checkpointing_from_config

    cfg = preset_config("admin-tiny")
    section = {"activation_checkpointing": {"partition_activations": False}}
    assert checkpointing_from_config(cfg, section, None).checkpoint_every == 1
    assert checkpointing_from_config(cfg, section, 0).checkpoint_every == 0  # the flag wins
    assert checkpointing_from_config(cfg, {}, None).checkpoint_every == 0
    # A model that already checkpoints every 3 layers keeps its 3 when the section is present.
    every_three = preset_config("admin-tiny", checkpoint_every=3)
    assert checkpointing_from_config(every_three, section, None).checkpoint_every == 3
