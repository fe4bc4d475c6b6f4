"""The fp16 path on the CPU (DeepSpeed made to run fp16 there): loss scaling, an overflow, ω's master copy."""

import json
import subprocess
import sys

import pytest

from launch_util import REPO, launcher_env


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "fp16.json"
    proc = subprocess.run([sys.executable, "tests/scripts/fp16_check.py", str(out)], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("stage", ["zero0", "zero2"])
def test_fp16_overflow_skips_step_and_halves_scale(fp16_run, stage):
    steps = fp16_run[stage]["steps"]
    assert all(step["dtype"] == "torch.float16" for step in steps), "the model must really run in fp16"
    assert [s["scale"] for s in steps[:3]] == [1024.0] * 3
    assert [s["skipped"] for s in steps[:3]] == [0, 0, 0] and all(s["moved"] for s in steps[:3])
    overflow = steps[3]
    assert overflow["skipped"] == 1 and not overflow["moved"], "an overflowing step must leave weights alone"
    assert overflow["scale"] == 512.0, "the loss scale halves on overflow"
    assert all(s["moved"] and s["skipped"] == 1 and s["scale"] == 512.0 for s in steps[4:])
    assert steps[5]["loss"] < steps[0]["loss"]


@pytest.mark.parametrize("stage", ["zero0", "zero2"])
def test_fp16_master_holds_exact_omega(fp16_run, stage):
    """ω's fp32 master is the profiled value itself, not its fp16 rounding."""
    record = fp16_run[stage]
    assert record["omega_master"] == pytest.approx(record["profile"][3], rel=1e-6)
    assert abs(record["profile"][3] - round(record["profile"][3] * 1024) / 1024) > 1e-5
