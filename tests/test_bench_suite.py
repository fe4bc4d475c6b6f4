"""The benchmark suite's smoke run (``python -m bench --quick``): every benchmark of bench/ has an entry, each
that ran has finite ratios from at least 5 side-by-side repeats, and the others say why they did not run."""

import importlib.util
import json
import math
import subprocess
import sys

import torch

from launch_util import REPO, launcher_env


def test_quick_suite_writes_every_benchmark(tmp_path):
    sys.path.insert(0, str(REPO))
    from bench.suite import ADAPTERS, EXCLUDED, HELPERS, TATOEBA

    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          env={**launcher_env(), "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["complete"] is True
    entries = results["benchmarks"]
    scripts = {p.stem for p in (REPO / "bench").glob("*.py")} - HELPERS
    assert scripts <= set(entries), f"benchmarks without an entry: {sorted(scripts - set(entries))}"
    assert set(entries) == set(ADAPTERS) | set(EXCLUDED)
    for name, entry in entries.items():
        if name in EXCLUDED:
            assert entry["status"] == "excluded" and entry["reason"]
            continue
        if name == "gpu_check":  # the suite never runs it; without a GPU the reason says so
            assert entry["status"] == "skipped" and ("GPU" in entry["reason"] or torch.cuda.is_available())
            continue
        if name == "bench_prepare" and not (TATOEBA / "train.de").is_file():
            assert entry["status"] == "skipped" and "Tatoeba" in entry["reason"]
            continue
        if name == "bench_ctranslate2" and (importlib.util.find_spec("ctranslate2") is None
                                            or not (TATOEBA / "test.de").is_file()):
            assert entry["status"] == "skipped" and entry["reason"]
            continue
        assert entry["status"] == "ran", (name, entry)
        assert entry["figures"], name
        for figure in entry["figures"]:
            assert figure["n"] >= 5 and len(figure["ratios"]) == figure["n"], (name, figure)
            numbers = [figure["ratio"], figure["min"], figure["max"], *figure["ratios"], *figure["medians"].values()]
            assert all(math.isfinite(x) and x > 0 for x in numbers), (name, figure)
            assert figure["min"] <= figure["ratio"] <= figure["max"]
            assert len(figure["medians"]) == 2, (name, figure)
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| `") == sum(len(e.get("figures", [])) for e in entries.values())
    assert "`stability`: excluded" in table


def _suite_run(figures: dict) -> dict:
    """A results.json of ``python -m bench`` with one benchmark holding ``{name: (ratio, min, max)}``."""
    rows = [{"name": name, "ratio": r, "min": lo, "max": hi} for name, (r, lo, hi) in figures.items()]
    return {"date": "2026-01-01 00:00", "seconds": 1.0, "benchmarks": {"bench_x": {"status": "ran", "figures": rows}},
            "machine": {"cpus": 2, "threads": 2, "load_before": 0.1, "torch": "x"}}


def test_compare_says_which_figures_moved_beyond_their_spread(tmp_path):
    sys.path.insert(0, str(REPO))
    from bench.compare import comparison

    before = _suite_run({"steady": (1.0, 0.9, 1.1), "moved": (1.0, 0.95, 1.05), "dropped": (2.0, 1.9, 2.1)})
    after = _suite_run({"steady": (1.05, 0.95, 1.2), "moved": (1.3, 1.25, 1.35), "added": (3.0, 2.9, 3.1)})
    rows = {line.split(" | ")[1]: line for line in comparison(before, after).splitlines() if line.startswith("| `")}
    assert set(rows) == {"steady", "moved"}
    assert rows["steady"].endswith("| yes |") and rows["moved"].endswith("| no |")
    assert "| 1.300 |" in rows["moved"]
    (tmp_path / "a.json").write_text(json.dumps(before))
    (tmp_path / "b.json").write_text(json.dumps(after))
    proc = subprocess.run([sys.executable, "-m", "bench.compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "only before: `bench_x` dropped" in proc.stdout and "only after: `bench_x` added" in proc.stdout
    missing = [str(tmp_path / "missing.json"), str(tmp_path / "b.json")]
    bad = subprocess.run([sys.executable, "-m", "bench.compare", *missing],
                         cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot read" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
