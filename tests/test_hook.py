"""Admin's rank-0 ω hook with two real DeepSpeed ranks over gloo, at every ZeRO stage."""

import json
import sys

import pytest
import torch

from admin_ds.model import profile_omega

from launch_util import free_port, run_deepspeed

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "scripts"))
import hook_check  # noqa: E402

LR = 1e-3


def reference_profile() -> list[float]:
    """What the profiling function computes in one process, on the same initial weights and rank 0's batch."""
    from admin_ds.model import build_model

    torch.manual_seed(0)
    model = build_model("admin-tiny", dropout=0.0, **hook_check.MODEL)
    src, tgt = hook_check.batch_for(0)
    profile = profile_omega(model, src, tgt, dropout=False)
    return profile.encoder + profile.decoder


CASES = ["0/fp32", "1/fp32", "2/fp32", "3/fp32", "3i/fp32", "2/bf16", "3i/bf16"]


@pytest.fixture(scope="module")
def hook_runs(tmp_path_factory):
    """One real `deepspeed` launch, two CPU ranks over gloo, running the hook for every case."""
    out = tmp_path_factory.mktemp("hook")
    run_deepspeed(["tests/scripts/hook_check.py", "--cases", ",".join(CASES), "--out", str(out)],
                  master_port=free_port(), timeout=600)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_hook_two_ranks(hook_runs, case):
    precision = case.split("/")[1]
    ranks = [json.loads((hook_runs / f"{case.replace('/', '-')}-rank{r}.json").read_text()) for r in range(2)]
    # Bit-identical ω on every rank, although each rank profiled on its own batch.
    assert ranks[0]["profile"] == ranks[1]["profile"]
    assert ranks[0]["master_after"] == ranks[1]["master_after"]
    if case.startswith("3"):
        assert ranks[0]["partitioned"] and ranks[1]["partitioned"], "ZeRO-3 left ω whole on each rank"

    # Rank 0's batch decides: equal to the single-process profile to 1e-6 relative (bf16 activations
    # round at ~3 significant digits, so there the statistics can only agree to about 1%).
    expected = reference_profile()
    assert ranks[0]["profile"] == pytest.approx(expected, rel=1e-6 if precision == "fp32" else 2e-2)
    assert expected[1] > 1.05, "a non-trivial profile is needed for this test to mean anything"
    expected = ranks[0]["profile"]

    # The optimizer's fp32 master copy holds the profiled ω (a constant vector) before the first step...
    assert ranks[0]["master_before"] == pytest.approx(expected, rel=1e-6)
    assert max(ranks[0]["spread_before"]) < 1e-6
    # ...and one Adam step moves it by about one learning rate from there, not from 1.0.
    for profiled, after in zip(expected, ranks[0]["master_after"]):
        assert abs(after - profiled) <= 1.5 * LR
