"""``admin-ds demo``: the whole flow on a built-in corpus (``admin_ds.pipelines.demo``)."""

from __future__ import annotations

import argparse
import os

from admin_ds.cli.args import add_options, options_from_args
from admin_ds.pipelines.demo import DemoConfig, run_demo
from admin_ds.training.metrics import setup_logging
from admin_ds.training.rendezvous import fill_rendezvous_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DemoConfig)


def main(args: argparse.Namespace) -> int:
    os.environ.update(fill_rendezvous_env(os.environ))  # a one-rank group on a free port
    setup_logging(rank=0)
    run_demo(options_from_args(DemoConfig, args))
    return 0
