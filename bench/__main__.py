"""``python -m bench``: every benchmark of bench/ in one run, into bench/results.json and bench/results.md.

    python -m bench                  # the suite at the scripts' own sizes (tens of minutes on 2 cores)
    python -m bench --quick          # smoke run: tiny sizes, 5 repeats (CI; about a minute)
    python -m bench --only bench_model bench_dropout --out /tmp/bench

Each figure is a ratio of two things measured side by side in this one process, one ratio per repeat
(the order swapped every repeat), reported as the median with the range of the repeats and their count.
Benchmarks that cannot run here (no GPU, no data) are listed as skipped with the reason; the scripts the
suite leaves to be run alone are listed as excluded with theirs (bench/suite.py, EXCLUDED).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from admin_ds.io import write_json_atomic, write_text_atomic
from bench.suite import ADAPTERS, EXCLUDED, Skip, finite


def run_one(name: str, quick: bool) -> dict:
    start = time.perf_counter()
    try:
        figures = ADAPTERS[name](quick)
    except Skip as why:
        return {"status": "skipped", "reason": str(why)}
    except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others' figures
        traceback.print_exc()
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:500]}
    entry = {"status": "ran", "seconds": round(time.perf_counter() - start, 1),
             "figures": [figure.to_dict() for figure in figures]}
    if not all(finite(figure) for figure in figures):
        entry.update(status="failed", reason="a ratio is not a finite positive number")
    return entry


def _number(value: float, unit: str) -> str:
    return f"{value * 1e3:.2f} ms" if unit == "s" and value < 1 else f"{value:.3f} {unit}"


def markdown(results: dict) -> str:
    """The table: one row per figure, then the benchmarks that did not run and why."""
    lines = ["| benchmark | figure | ratio (median) | medians | spread (min-max) | n |", "|---|---|---|---|---|---|"]
    others = []
    for name, entry in results["benchmarks"].items():
        if entry["status"] != "ran":
            others.append(f"- `{name}`: {entry['status']}: {entry['reason']}")
            continue
        for f in entry["figures"]:
            medians = ", ".join(f"{side} {_number(v, f['unit'])}" for side, v in f["medians"].items())
            lines.append(f"| `{name}` | {f['name']} ({f['meaning']}) | **{f['ratio']:.3f}x** | {medians} | "
                         f"{f['min']:.3f}-{f['max']:.3f} | {f['n']} |")
    m = results["machine"]
    header = (f"{'Quick (smoke) run' if results['quick'] else 'Run'} of {results['date']}: {m['cpus']} CPUs, "
              f"load {m['load_before']} before, torch {m['torch']}, {m['threads']} threads, "
              f"{results['seconds']:.0f} s in all.")
    return "\n".join([header, "", *lines, "", *others]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for results.json and results.md")
    parser.add_argument("--only", nargs="+", choices=sorted(ADAPTERS), help="run only these benchmarks")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    start = time.perf_counter()
    results = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "python": platform.python_version(), "load_before": round(os.getloadavg()[0], 2)},
               "benchmarks": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or ADAPTERS:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results["benchmarks"][name] = entry = run_one(name, args.quick)
        print(f"[bench] {name}: {entry['status']} {entry.get('seconds', '')}", file=sys.stderr, flush=True)
        # After every benchmark, so that a long run that is stopped keeps what it measured.
        write_json_atomic(args.out / "results.json", {**results, "complete": False})
    if not args.only:
        for name, reason in EXCLUDED.items():
            results["benchmarks"][name] = {"status": "excluded", "reason": reason}
    results["seconds"] = time.perf_counter() - start
    results["complete"] = True
    write_json_atomic(args.out / "results.json", results)
    table = markdown(results)
    write_text_atomic(args.out / "results.md", table)
    print(table)
    return 1 if any(e["status"] == "failed" for e in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
