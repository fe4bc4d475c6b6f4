"""``python -m bench.compare BEFORE AFTER``: two suite runs side by side, one row per figure.

    python -m bench.compare old/results.json new/results.json [--out compare.md]

Each run is a ``results.json`` written by ``python -m bench``. A figure is matched by its benchmark and
name; figures only one run has are listed after the table. A row says whether the two medians lie within
each other's spread (the range of the per-repeat ratios): "yes" when each median falls inside the other
run's range, "no" otherwise. Two runs on one machine, one after the other, are what this compares; a
"no" on a loaded machine says more about the machine than about the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from admin_ds.io import write_text_atomic


def figures(results: dict) -> dict[tuple[str, str], dict]:
    """``{(benchmark, figure name): figure}`` of the benchmarks that ran."""
    found = {}
    for bench, entry in results["benchmarks"].items():
        for figure in entry.get("figures", []) if entry.get("status") == "ran" else []:
            found[(bench, figure["name"])] = figure
    return found


def within_spread(before: dict, after: dict) -> bool:
    """Each run's median ratio lies inside the other's min-max range of per-repeat ratios."""
    return before["min"] <= after["ratio"] <= before["max"] and after["min"] <= before["ratio"] <= after["max"]


def _run_line(label: str, results: dict) -> str:
    m = results["machine"]
    return (f"- {label}: {results['date']}, {results['seconds']:.0f} s, {m['cpus']} CPUs, {m['threads']} threads, "
            f"load {m['load_before']} before, torch {m['torch']}")


def comparison(before: dict, after: dict) -> str:
    """The markdown table of the figures both runs have, then the ones only one has."""
    old, new = figures(before), figures(after)
    lines = [_run_line("before", before), _run_line("after", after), "",
             "| benchmark | figure | before (spread) | after (spread) | after / before | within spread |",
             "|---|---|---|---|---|---|"]
    for key in [k for k in old if k in new]:
        b, a = old[key], new[key]
        lines.append(f"| `{key[0]}` | {key[1]} | {b['ratio']:.3f}x ({b['min']:.3f}-{b['max']:.3f}) | "
                     f"{a['ratio']:.3f}x ({a['min']:.3f}-{a['max']:.3f}) | {a['ratio'] / b['ratio']:.3f} | "
                     f"{'yes' if within_spread(b, a) else 'no'} |")
    alone = [f"- only {label}: `{k[0]}` {k[1]} ({f['ratio']:.3f}x)"
             for label, mine, other in (("before", old, new), ("after", new, old))
             for k, f in mine.items() if k not in other]
    return "\n".join(lines + ([""] + alone if alone else [])) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("before", type=Path, help="results.json of the earlier run")
    parser.add_argument("after", type=Path, help="results.json of the later run")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    runs = []
    for path in (args.before, args.after):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            print(f"python -m bench.compare: cannot read {path}: {err}", file=sys.stderr)
            return 2
    table = comparison(*runs)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
