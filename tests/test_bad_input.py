"""Bad input, as users give it: malformed corpora, DeepSpeed configs, ω profiles, checkpoints and
command lines. Each ends in exactly one error line on stderr (the last; progress lines such as "loading X"
may come before it), exit status 2, no traceback, and writes nothing: no half-made output directory,
checkpoint or file, and the inputs are left as they were."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from admin_ds.cli import main as cli_main

from launch_util import REPO, launcher_env

TINY = ["--arch", "admin-tiny", "--max-tokens", "300", "--warmup-updates", "2", "--no-tensorboard"]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, synthetic_data):
    """Read-only inputs every case may use: the prepared toy corpus, its raw text, a finished 2-step ZeRO-2
    run (admin-tiny) and that run's fp32 export."""
    root = tmp_path_factory.mktemp("bad-input")
    run = root / "run"
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(synthetic_data), "--save-dir",
                           str(run), "--max-steps", "2", "--save-interval", "2", "--deepspeed_config",
                           str(REPO / "ds_configs" / "cpu_zero2_fp32.json"), *TINY],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli_main(["convert", str(run), str(root / "export")]) == 0
    text = root / "text"
    text.mkdir()
    for split in ("train", "valid"):
        for lang, words in (("de", "guten morgen"), ("en", "good morning")):
            (text / f"{split}.{lang}").write_text("".join(f"{words} {i}\n" for i in range(40)), encoding="utf-8")
    return {"data": synthetic_data, "run": run, "export": root / "export", "text": text}


def corpus(tmp: Path, ctx, **changes) -> Path:
    """A copy of the raw de-en text with some files replaced (name -> bytes, or None to delete)."""
    text = tmp / "text"
    shutil.copytree(ctx["text"], text)
    for name, content in changes.items():
        path = text / name.replace("_", ".")
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    return text


def prepare_argv(text: Path, tmp: Path, *extra, out=None) -> list:
    return ["prepare", "--train-prefix", text / "train", "--valid-prefix", text / "valid", "--source-lang", "de",
            "--target-lang", "en", "--vocab-size", "40", "--out", out or tmp / "out", *extra]


def train_argv(tmp: Path, ctx, *extra, save=None) -> list:
    return ["train", "--data", ctx["data"], "--save-dir", save or tmp / "out", "--max-steps", "2", *TINY, *extra]


def json_file(tmp: Path, name: str, content) -> Path:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def run_copy(tmp: Path, ctx) -> Path:
    copy = tmp / "run-copy"
    shutil.copytree(ctx["run"], copy)
    return copy


def ds(tmp, ctx, config):
    return train_argv(tmp, ctx, "--deepspeed_config", json_file(tmp, "ds.json", config))


def profile_file(tmp: Path, text: str) -> Path:
    return json_file(tmp, "omega.profile", text)


def truncated_states(tmp, ctx):
    run = run_copy(tmp, ctx)
    states = run / "global_step2" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:300])
    return ["convert", run, tmp / "out"]


def missing_shard(tmp, ctx):
    run = run_copy(tmp, ctx)
    (run / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    return ["convert", run, tmp / "out"]


def latest_names_nothing(tmp, ctx):
    run = run_copy(tmp, ctx)
    (run / "latest").write_text("global_step99")
    return ["convert", run, tmp / "out"]


def export_with_other_architecture(tmp, ctx):
    export = tmp / "export"
    shutil.copytree(ctx["export"], export)
    config = json.loads((export / "config.json").read_text())
    config["model"]["d_model"] = 64
    (export / "config.json").write_text(json.dumps(config))
    return ["convert", export, tmp / "out"]


def export_with_garbage_weights(tmp, ctx):
    export = tmp / "export"
    shutil.copytree(ctx["export"], export)
    (export / "model.safetensors").write_bytes(b"\x00" * 64)
    return ["translate", "--checkpoint", export, "--input", json_file(tmp, "in.txt", "a b\n"), "--output",
            tmp / "out", "--device", "cpu"]


def resume_with_other_vocabulary(tmp, ctx):
    other = tmp / "other-data"
    assert cli_main([str(a) for a in prepare_argv(corpus(tmp, ctx), tmp, out=other)]) == 0
    run = run_copy(tmp, ctx)
    return ["train", "--data", other, "--save-dir", run, "--max-steps", "4", *TINY]


def average_different_architectures(tmp, ctx):
    other = tmp / "other"
    assert cli_main(["convert", str(ctx["run"]), str(other)]) == 0
    config = json.loads((other / "config.json").read_text())
    config["model"]["decoder_layers"] = 3
    (other / "config.json").write_text(json.dumps(config))
    return ["average-checkpoints", "--inputs", ctx["export"], other, "--output", tmp / "out"]


SHALLOW_PROFILE = "1 1.0\n2 1.2\n1 1.0\n2 1.1\n3 1.2\n"  # one layer each; admin-tiny has two
WORDY_PROFILE = "1 1.0\n2 omega\n1 1.0\n"

CASES = {
    # corpora (prepare)
    "line counts differ": (lambda t, c: prepare_argv(corpus(t, c, train_en=b"one\ntwo\n"), t), "lines"),
    "invalid UTF-8": (lambda t, c: prepare_argv(corpus(t, c, train_de=b"gut\n\xff\xfe\n" * 20), t), "UTF-8"),
    "empty corpus": (lambda t, c: prepare_argv(corpus(t, c, train_de=b"", train_en=b""), t), "no pair"),
    "missing file": (lambda t, c: prepare_argv(corpus(t, c, valid_en=None), t), "does not exist"),
    "same languages": (lambda t, c: prepare_argv(corpus(t, c), t, "--target-lang", "de"), "must differ"),
    "vocabulary of 0": (lambda t, c: prepare_argv(corpus(t, c), t, "--vocab-size", "0"), "--vocab-size"),
    "not a sentencepiece model": (lambda t, c: prepare_argv(corpus(t, c), t, "--spm-model",
                                                            json_file(t, "x.model", "hello")), "x.model"),
    "output exists": (lambda t, c: prepare_argv(corpus(t, c), t, out=c["data"]), "exists"),
    # DeepSpeed configs (train)
    "ZeRO stage 9": (lambda t, c: ds(t, c, {"zero_optimization": {"stage": 9}}), "stage"),
    "ZeRO stage of the wrong type": (lambda t, c: ds(t, c, {"zero_optimization": {"stage": "two"}}), "stage"),
    "misspelt top-level key": (lambda t, c: ds(t, c, {"zero_optimizaton": {"stage": 2}}),
                               "did you mean 'zero_optimization'"),
    "misspelt ZeRO key": (lambda t, c: ds(t, c, {"zero_optimization": {"stag": 2}}), "stag"),
    "batch sizes that do not divide": (lambda t, c: ds(t, c, {"train_batch_size": 3, "gradient_accumulation_steps": 2,
                                                              "train_micro_batch_size_per_gpu": 1}), "batch"),
    "fp16 and bf16 together": (lambda t, c: ds(t, c, {"fp16": {"enabled": True}, "bf16": {"enabled": True}}),
                               "cannot be simultaneously"),
    "config not JSON": (lambda t, c: ds(t, c, "{ zero: 2"), "not valid JSON"),
    "config a JSON list": (lambda t, c: ds(t, c, "[1, 2]"), "JSON object"),
    "config missing": (lambda t, c: train_argv(t, c, "--deepspeed_config", t / "none.json"), "not found"),
    "--optimizer beside the config's optimizer": (
        lambda t, c: train_argv(t, c, "--optimizer", "radam", "--deepspeed_config", REPO / "ds_configs" /
                                "cpu_bf16.json"), "--optimizer radam would not be used"),
    "gradient accumulation not a number": (lambda t, c: ds(t, c, {"gradient_accumulation_steps": "x",
                                                                  "train_micro_batch_size_per_gpu": 1}),
                                           "DeepSpeed config"),
    # ω profiles (train --omega-profile)
    "profile of another depth": (lambda t, c: train_argv(t, c, "--omega-profile", profile_file(t, SHALLOW_PROFILE)),
                                 "needs"),
    "profile with a word": (lambda t, c: train_argv(t, c, "--omega-profile", profile_file(t, WORDY_PROFILE)),
                            "omega"),
    "profile missing": (lambda t, c: train_argv(t, c, "--omega-profile", t / "none.profile"), "none.profile"),
    "profile for post-ln": (lambda t, c: train_argv(t, c, "--residual", "post-ln", "--omega-profile",
                                                    profile_file(t, "1 1.0\n" * 10)), "--residual admin"),
    # checkpoints
    "truncated model states": (truncated_states, "cannot read"),
    "missing optimizer shard": (missing_shard, "missing"),
    "latest names no checkpoint": (latest_names_nothing, "global_step99"),
    "not a checkpoint": (lambda t, c: ["convert", c["text"], t / "out"], "text"),
    "export of another architecture": (export_with_other_architecture, "shape"),
    "export with garbage weights": (export_with_garbage_weights, "model.safetensors"),
    "resume with another vocabulary": (resume_with_other_vocabulary, "vocabular"),
    "average with an export whose config does not fit its weights": (average_different_architectures,
                                                                      "does not fit the model config"),
    "translate a missing checkpoint": (lambda t, c: ["translate", "--checkpoint", t / "none", "--input",
                                                     json_file(t, "in.txt", "a\n"), "--output", t / "out"],
                                       "none"),
    # command lines
    "train without an end": (lambda t, c: ["train", "--data", c["data"], "--save-dir", t / "out", *TINY],
                             "--max-steps"),
    "negative learning rate": (lambda t, c: train_argv(t, c, "--lr", "-1"), "--lr"),
    "negative weight decay": (lambda t, c: train_argv(t, c, "--weight-decay", "-0.1"), "--weight-decay"),
    "Adam beta of 1": (lambda t, c: train_argv(t, c, "--adam-betas", "0.9,1"), "--adam-betas"),
    "zero skip patience": (lambda t, c: train_argv(t, c, "--skip-patience", "0"), "--skip-patience"),
    "rollback factor above 1": (lambda t, c: train_argv(t, c, "--rollback-lr-factor", "2"), "--rollback-lr-factor"),
    "no collective timeout": (lambda t, c: train_argv(t, c, "--dist-timeout-minutes", "0"), "--dist-timeout-minutes"),
    "no tokens per batch": (lambda t, c: train_argv(t, c, "--max-tokens", "0"), "--max-tokens"),
    "unknown preset": (lambda t, c: train_argv(t, c, "--arch", "admin-huge"), "unknown preset"),
    "heads that do not divide the width": (lambda t, c: train_argv(t, c, "--nhead", "5"), "divisible"),
    "unknown flag": (lambda t, c: train_argv(t, c, "--learning-rate", "1"), "unrecognized arguments"),
    "steps not a number": (lambda t, c: train_argv(t, c, "--max-steps", "many"), "invalid int value"),
    "unknown command": (lambda t, c: ["trian", "--data", c["data"]], "invalid choice"),
    "beam of 0": (lambda t, c: ["translate", "--checkpoint", c["export"], "--input", json_file(t, "in.txt", "a\n"),
                                "--output", t / "out", "--beam", "0"], "--beam"),
    "hypotheses missing": (lambda t, c: ["evaluate", "--hyp", t / "none.txt", "--ref", json_file(t, "r.txt", "a\n"),
                                         "--output", t / "out"], "none.txt"),
    "hypotheses and references differ in length": (
        lambda t, c: ["evaluate", "--hyp", json_file(t, "h.txt", "a\nb\n"), "--ref", json_file(t, "r.txt", "a\n"),
                      "--output", t / "out"], "2 hypotheses but 1 references"),
    "plot of a file it cannot read": (lambda t, c: ["plot", json_file(t, "x.bin", "\x00\x01"), "--out", t / "out"],
                                      "x.bin"),
    "demo on a missing folder": (lambda t, c: ["demo", "--data", t / "none", "--workdir", t / "out"], "none"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, ctx, tmp_path, capsys):
    build, fragment = CASES[case]
    argv = [str(arg) for arg in build(tmp_path, ctx)]
    capsys.readouterr()
    logging.root.handlers.clear()  # the command's own logging set-up then writes to this case's stderr
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    inputs_before = {p: p.stat().st_mtime_ns for p in ctx["run"].rglob("*")}
    try:
        status = cli_main(argv)
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and fragment in errors[0], err
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, f"wrote {sorted(map(str, set(after) - set(before)))}"
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in ctx["run"].rglob("*")} == inputs_before


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40
