"""The ``admin-ds`` command: argument parsing and dispatch only; each subcommand lives in its own module.

Every subcommand module provides ``add_arguments(parser)`` and ``main(args) -> int``. A UserError becomes
one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from admin_ds.errors import UserError

# name -> (module, one-line help). Modules are imported lazily so that `admin-ds --help` stays fast.
SUBCOMMANDS = {
    "prepare": ("admin_ds.data.prepare", "train sentencepiece and binarise a parallel corpus"),
    "profile": ("admin_ds.profile_cmd", "profile Admin's ω on one batch and write a profile file"),
    "train": ("admin_ds.train", "train with DeepSpeed (also: deepspeed --module admin_ds.train ...)"),
    "translate": ("admin_ds.translate", "translate a file with beam search"),
    "evaluate": ("admin_ds.evaluate", "score a checkpoint or a hypothesis file with sacrebleu"),
    "average-checkpoints": ("admin_ds.average", "average the last N checkpoints into one model"),
    "convert": ("admin_ds.convert", "convert a DeepSpeed checkpoint to safetensors or a plain Post-LN model"),
    "demo": ("admin_ds.demo", "run the whole flow on a built-in corpus"),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser of ``command``; the others get only their one-line help.

    Importing a subcommand module can be slow (``train`` imports DeepSpeed), so only the one that runs
    is imported.
    """
    parser = argparse.ArgumentParser(prog="admin-ds", description="Very deep Admin Transformers with DeepSpeed.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(handler=module.main)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"admin-ds {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"admin-ds {args.command}: interrupted", file=sys.stderr)
        return 130
