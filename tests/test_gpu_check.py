"""bench/gpu_check.sh and bench/gpu_check.py on a CPU (--device cpu --tiny): every row of the matrix with every
field, numbers that are what the FLOP model and the batches say, the budget and failure rows; and, for the
GPU run itself, the planned batch size and its padding share."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from launch_util import REPO, launcher_env

sys.path.insert(0, str(REPO))
from admin_ds.model import preset_config  # noqa: E402
from admin_ds.model.flops import batch_training_flops, training_flops  # noqa: E402
from bench import gpu_check  # noqa: E402
from bench.gpu import batches as batching  # noqa: E402

FIELDS = ["config", "shape", "precision", "side", "checkpoint_every", "params_M", "max_tokens", "steps", "warmup",
          "batch_shapes", "tokens_timed", "padding_share", "step_s_median", "seconds_timed", "tokens_per_s",
          "model_flops_timed", "mfu", "mfu_vs_matmul", "peak_flops", "peak_mem_GiB", "plan_GiB", "host_syncs",
          "loss_first_last", "row_s"]
POSITIVE = ["params_M", "max_tokens", "tokens_timed", "step_s_median", "seconds_timed", "tokens_per_s",
            "model_flops_timed", "mfu", "mfu_vs_matmul", "peak_flops", "peak_mem_GiB", "plan_GiB", "row_s"]


ONLY = ["4-2 d=64 bf16", "4-2 d=32 fp32"]  # both shapes and both precisions, half the matrix's time


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**launcher_env(), "OMP_NUM_THREADS": "2", "WHEELS": str(out / "no-wheels"), "BUDGET_S": "600"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--device", "cpu", "--tiny",
                           "--warmup", "1", "--steps", "3", "--stock-micro-batches", "2",
                           "--compile-backend", "aot_eager", "--only", *ONLY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    return out, rows, proc.stdout


def test_every_row_has_every_figure(tiny_run):
    out, rows, stdout = tiny_run
    configs = {r["config"] for r in rows}
    expected = {f"{group}{tail}" for group in ONLY for tail in ("", " ckpt=off", " ckpt=on")}
    expected.add(f"{ONLY[0]} ckpt=off compiled")  # the first group's compiled row (aot_eager here: no C++)
    assert configs == expected and len(rows) == 7, configs
    compiled = next(r for r in rows if r["config"].endswith("compiled"))
    assert compiled["compiled"] == "aot_eager" and compiled["compile_s"] > 0 and "vs_stock" in compiled
    for row in rows:
        assert [f for f in FIELDS if f not in row] == [], row
        for name in POSITIVE:
            assert math.isfinite(row[name]) and row[name] > 0, (row["config"], name, row[name])
        assert 0 <= row["padding_share"] < 1
        assert row["steps"] == 3 and len(row["batch_shapes"]) == 3
        assert row["host_syncs"] is None  # counted on a GPU only (torch.cuda.set_sync_debug_mode)
        assert all(math.isfinite(loss) and loss > 0 for loss in row["loss_first_last"])
    for row in rows:
        if row["side"] == "stock":
            assert row["micro_batches"] == 2 and row["optimizer"] == "torch.optim.AdamW(fused=True)"
        else:
            assert row["zero"] == 2 and row["skipped_steps"] == 0
            assert row["checkpoint_every"] == (1 if row["config"].endswith("ckpt=on") else 0)
    assert (out / "gpu_check.log").read_text().count('"config"') == 7
    assert "vs stock" in stdout.splitlines()[-8]  # the closing table: a header and 7 lines


def test_ours_and_stock_train_on_the_same_batches(tiny_run):
    _, rows, _ = tiny_run
    for row in (r for r in rows if r["side"] == "ours"):
        stock = next(r for r in rows if r["side"] == "stock" and (r["shape"], r["precision"]) ==
                     (row["shape"], row["precision"]))
        for name in ("tokens_timed", "batch_shapes", "padding_share", "model_flops_timed", "max_tokens"):
            assert row[name] == stock[name], (row["config"], name)
        assert row["vs_stock"] == pytest.approx(row["tokens_per_s"] / stock["tokens_per_s"], rel=1e-3, abs=1e-4)
        assert row["params_M"] == pytest.approx(stock["params_M"], rel=0.05)  # the same shape (stock adds 2 norms)
    on = [r for r in rows if r["config"].endswith("ckpt=on")]
    assert all(r["plan_GiB"] < next(o for o in rows if o["config"] == r["config"][:-2] + "off")["plan_GiB"]
               for r in on)


def test_mfu_and_tokens_follow_from_the_flop_model_and_the_batches(tiny_run):
    _, rows, _ = tiny_run
    for row in rows:
        arch, overrides = gpu_check.TINY_SHAPES[row["shape"]]
        cfg = preset_config(arch, **overrides)
        made = batching.training_batches(row["max_tokens"], row["warmup"] + row["steps"] + 1, row["vocab"],
                                         row["batch_seed"], row["pool"])
        timed = made[row["warmup"]: row["warmup"] + row["steps"]]
        assert [b.shape for b in timed] == row["batch_shapes"]
        flops = sum(batch_training_flops(cfg, b.src_lengths, b.tgt_lengths) for b in timed)
        assert row["model_flops_timed"] == pytest.approx(flops, rel=1e-12)
        assert row["mfu"] == pytest.approx(flops / row["seconds_timed"] / row["peak_flops"], rel=1e-3, abs=1e-6)
        assert row["tokens_timed"] == sum(b.tokens for b in timed)
        assert row["tokens_per_s"] == pytest.approx(row["tokens_timed"] / row["seconds_timed"], rel=1e-3)
        assert row["padding_share"] == pytest.approx(batching.padding_share(timed), abs=1e-5)


def test_the_row_flop_model_is_the_padded_one_on_uniform_rows_and_skips_padding():
    cfg = preset_config("admin-60-12-big")
    assert batch_training_flops(cfg, [31] * 64, [27] * 64) == pytest.approx(training_flops(cfg, 64, 31, 27), rel=1e-12)
    ragged = batch_training_flops(cfg, [31, 10], [27, 5])
    assert batch_training_flops(cfg, [31], [27]) < ragged < training_flops(cfg, 2, 31, 27)


def test_a_row_out_of_time_is_skipped_and_a_failing_row_reported(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--budget-s", "0",
                                 "--min-config-s", "5"])
    run = gpu_check.Run(args, torch.device("cpu"), 1.0, "test", 1.0)
    group = gpu_check.Group("4-2 d=32", "admin-tiny", {}, "fp32", 64, [], "4-2 d=32 fp32")
    rows = []

    def never() -> dict:
        raise AssertionError("a row past the budget must not run")

    def broken() -> dict:
        raise ValueError("planted failure\nsecond line")

    assert not gpu_check.attempt(run, group, "ours", 0, never, rows)
    args.budget_s = 1e6
    assert not gpu_check.attempt(run, group, "stock", 0, broken, rows)
    assert gpu_check.attempt(run, group, "ours", 1, lambda: {"tokens_per_s": 1.0}, rows)
    assert rows[0]["skipped"].startswith("time budget") and "needs ~5 s" in rows[0]["skipped"]
    assert rows[1]["error"] == "ValueError: planted failure" and rows[1]["config"] == "4-2 d=32 fp32"
    assert rows[2]["config"] == "4-2 d=32 fp32 ckpt=on" and run.took[("ours", "4-2 d=32", 1)] >= 0
    written = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert written == rows


def test_the_gpu_batches_fill_the_planned_memory_with_little_padding():
    """What the H200 run will use (139.8 GiB), without a GPU: the planned max-tokens fits 65% of the memory
    at bf16 and fp16 and the next size up does not (or it is the cap), and bucketing keeps padding < 10%."""
    memory = 143771 * 2 ** 20
    for shape, (arch, overrides) in gpu_check.SHAPES.items():
        cfg = preset_config(arch, **overrides)
        tokens = batching.planned_max_tokens(arch, cfg, ["bf16", "fp16"], memory, 0.65, 65536, 4096, "cuda")
        fits = [batching.planned_bytes(arch, cfg, p, tokens, "cuda") for p in ("bf16", "fp16")]
        assert max(fits) <= 0.65 * memory and tokens % 4096 == 0, shape
        assert tokens == 65536 or max(batching.planned_bytes(arch, cfg, p, tokens + 4096, "cuda")
                                      for p in ("bf16", "fp16")) > 0.65 * memory, shape
    made = batching.training_batches(65536, 14, 32000)
    assert 0 < batching.padding_share(made) < 0.10
    assert all(b.shape[0] * max(b.shape[1:]) <= 65536 for b in made)


def test_the_script_parses_and_is_shellcheck_clean():
    scripts = [str(REPO / "bench" / name) for name in ("gpu_check.sh", "gpu_product_check.sh")]
    for script in scripts:
        assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0, script
    shellcheck = os.environ.get("SHELLCHECK", "shellcheck")
    proc = subprocess.run([shellcheck, "--format=gcc", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


def test_an_engine_whose_fused_adam_fails_is_built_again_with_torch_adam(tmp_path, monkeypatch):
    """The GPU run's one fallback, without DeepSpeed: a failing initialize is retried once with torch_adam."""
    config = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
    (tmp_path / "fused.json").write_text(json.dumps(config))
    monkeypatch.setitem(gpu_check.DS_CONFIGS["cpu"], "fp32", str(tmp_path / "fused.json"))
    seen = []

    def initialize(model, config, optimizer, scheduler):
        seen.append(dict(config["optimizer"]["params"]))
        if not config["optimizer"]["params"].get("torch_adam"):
            raise RuntimeError("planted: Ninja is required to load C++ extensions")
        return "engine"

    monkeypatch.setattr(gpu_check.training_engine, "initialize", initialize)
    args = gpu_check.parse_args(["--out", str(tmp_path), "--device", "cpu", "--tiny"])
    run = gpu_check.Run(args, torch.device("cpu"), 1.0, "test", 1.0)
    arch, overrides = gpu_check.TINY_SHAPES["4-2 d=32"]
    group = gpu_check.Group("4-2 d=32", arch, overrides, "fp32", 64, [], "4-2 d=32 fp32")
    engine, error = gpu_check.build_engine(run, group)
    assert engine == "engine" and error == "RuntimeError: planted: Ninja is required to load C++ extensions"
    assert [params.get("torch_adam") for params in seen] == [None, True] and seen[1]["lr"] == gpu_check.LR
