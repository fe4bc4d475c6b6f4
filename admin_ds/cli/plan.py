"""``admin-ds plan``: memory per rank of a model and a ZeRO setup (parameters, gradients, optimizer states,
activations), and whether it fits a GPU. Nothing is built or launched; docs/plan.md has the formulas.
"""

from __future__ import annotations

import argparse
import json

from admin_ds.cli.args import add_model_options, add_options, model_choice_from_args, options_from_args
from admin_ds.training.plan import PlanConfig, make_plan, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_options(parser, PlanConfig, "setup")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    setup = options_from_args(PlanConfig, args)
    choice = model_choice_from_args(args)
    plan = make_plan(choice.arch, choice.resolve(), setup)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render(plan))
    return 0
