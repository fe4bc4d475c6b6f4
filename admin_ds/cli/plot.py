"""``admin-ds plot FILE... --out DIR``: loss curves, ω per sublayer, the fp16 loss scale and tokens/s.

FILE is a metrics.jsonl, a run directory, a profile file or a checkpoint (``admin_ds.reports.plots``).
"""

from __future__ import annotations

import argparse

from admin_ds.reports.plots import plot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE",
                        help="metrics.jsonl files, run directories, ω profile files or checkpoints")
    parser.add_argument("--out", required=True, help="folder for the PNG figures")


def main(args: argparse.Namespace) -> int:
    for path in plot(args.inputs, args.out):
        print(f"wrote {path}")
    return 0
