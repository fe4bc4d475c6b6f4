"""`bench/stability.py --quick` as a smoke run: it trains every scheme at two depths with the real
`admin-ds train`, scores them with sacrebleu, measures the output change at initialisation, and writes its
JSON and figures (the figures of the full study are whatever it measures; this checks that it measures)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from launch_util import REPO, launcher_env

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"
SCHEMES = {"post-ln", "pre-ln", "admin", "deepnorm"}


@pytest.mark.slow
def test_stability_quick_writes_its_results(tmp_path):
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.stability", "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=REPO, env=launcher_env(), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "stability-quick.json").read_text())
    runs = results["runs"]
    assert len(runs) == 8 and {run["scheme"] for run in runs.values()} == SCHEMES
    for name, run in runs.items():
        assert isinstance(run["diverged"], bool) and isinstance(run["stalled"], bool), name
        assert math.isfinite(run["bleu"]) and run["chrf"] > 0.0, name
        assert run["n_sentences"] == 20 and "tok:13a" in run["signature"], name
        assert math.isfinite(run["last_valid_loss"]), name
    change = results["output_change"]["mean_squared_change"]
    assert set(change) == SCHEMES
    assert all(value > 0 and math.isfinite(value) for per_depth in change.values() for value in per_depth.values())
    figures = out / "stability-quick"
    for png in ("output_change.png", "stability-curves/loss.png", "stability-curves/omega.png"):
        assert (figures / png).read_bytes().startswith(b"\x89PNG"), png
