"""``admin-ds prepare``: train sentencepiece (or reuse a model) and binarise a parallel corpus."""

from __future__ import annotations

import argparse

from admin_ds.cli.args import add_options, options_from_args
from admin_ds.data.prepare import PrepareConfig, prepare, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, PrepareConfig)


def main(args: argparse.Namespace) -> int:
    config = options_from_args(PrepareConfig, args)
    print(summary(prepare(config), config.out_dir))
    return 0
