"""The ``admin-ds`` command: parsing and dispatch, and the one place where a user error becomes one line.

Every command module here provides ``add_arguments(parser)`` and ``main(args) -> int``, and does nothing
else than turn flags into configs and call the library. The library raises ``UserError`` for mistakes a
user can fix; ``main`` prints it as one line on stderr and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from admin_ds.errors import UserError

# name -> (module, one-line help). Modules are imported lazily so that `admin-ds --help` stays fast.
SUBCOMMANDS = {
    "prepare": ("admin_ds.cli.prepare", "train sentencepiece and binarise a parallel corpus"),
    "profile": ("admin_ds.cli.profile", "profile Admin's ω on one batch and write a profile file"),
    "train": ("admin_ds.cli.train", "train with DeepSpeed (also: deepspeed --module admin_ds.train ...)"),
    "translate": ("admin_ds.cli.translate", "translate a file with beam search"),
    "evaluate": ("admin_ds.cli.evaluate", "score a checkpoint or a hypothesis file with sacrebleu"),
    "average-checkpoints": ("admin_ds.cli.average", "average the last N checkpoints into one model"),
    "convert": ("admin_ds.cli.convert", "convert a DeepSpeed checkpoint to safetensors or a plain Post-LN model"),
    "demo": ("admin_ds.cli.demo", "run the whole flow on a built-in corpus"),
    "plan": ("admin_ds.cli.plan", "memory per rank of a model and a ZeRO setup, and whether it fits a GPU"),
    "plot": ("admin_ds.cli.plot", "plot loss curves, ω per sublayer, loss scale and tokens/s from run files"),
}


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every help line that has a default worth showing (not None, not a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # nargs == 0: a switch (store_true / store_false), whose default says nothing.
        if (action.default in (None, argparse.SUPPRESS) or action.required or "%(default)" in text
                or action.nargs == 0):
            return text
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error here (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser of ``command``; the others get only their one-line help.

    Importing a command module can be slow (``train`` imports DeepSpeed), so only the one that runs is
    imported.
    """
    parser = OneLineParser(prog="admin-ds", description="Very deep Admin Transformers with DeepSpeed.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(handler=module.main)
    return parser


def _setup_logging() -> None:
    """INFO messages on stderr, bare; ``train`` sets its own (rank 0 INFO, the others WARNING). A handler an
    earlier command in the same process (a test, a notebook) left on a stream that is closed since is dropped
    first; handlers the caller installed stay, and then decide alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"admin-ds {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"admin-ds {args.command}: interrupted", file=sys.stderr)
        return 130
