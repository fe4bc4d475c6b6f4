"""``admin-ds average-checkpoints``: the element-wise mean of several checkpoints' weights, as one fp32 export.

The Admin paper evaluates the average of the last checkpoints of a run (fairseq's average_checkpoints.py).
Inputs are anything ``admin_ds.load_model`` accepts; ``--save-dir DIR --last N`` picks the N
``DIR/global_stepK`` directories with the highest K, ``--save-dir DIR --best N`` the N (still on disk) with
the best validation value of the run's ``--best-metric`` (``valid_loss`` if it had none) in metrics.jsonl.
Sums are accumulated in float64, one model in memory at a time besides the running sum, and the mean is stored
in fp32 with the newest input's tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from admin_ds.checkpoints.average import average_checkpoints, best_step_checkpoints, step_checkpoints
from admin_ds.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", metavar="CKPT", help="checkpoints to average")
    source.add_argument("--save-dir", help="a training run's directory: average its last --last global_step*")
    parser.add_argument("--last", type=int, help="with --save-dir: how many of the newest checkpoints")
    parser.add_argument("--best", type=int, metavar="N", help="with --save-dir: the N checkpoints with the best "
                                                              "validation value of the run's --best-metric "
                                                              "(valid_loss if it had none), instead of --last")
    parser.add_argument("--output", required=True, help="directory for the averaged fp32 export")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")


def main(args: argparse.Namespace) -> int:
    if args.save_dir:
        if (args.last is None) == (args.best is None):
            raise UserError("--save-dir needs one of --last N and --best N")
        if args.best is not None:
            paths, metric = best_step_checkpoints(args.save_dir, args.best)
            print(f"the {args.best} checkpoints with the best {metric}: {', '.join(p.name for p in paths)}")
        else:
            paths = step_checkpoints(args.save_dir, args.last)
    else:
        if args.last is not None or args.best is not None:
            raise UserError("--last and --best go with --save-dir, not --inputs")
        paths = [Path(p) for p in args.inputs]
    average_checkpoints(paths, args.output, force=args.force)
    print(f"averaged {len(paths)} checkpoints into {args.output}")
    return 0
