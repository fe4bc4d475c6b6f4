"""Config dataclass fields that double as command-line flags.

Each concern keeps one config dataclass (``PrepareConfig``, ``TrainConfig``, ``DecodingConfig``, ...) with
its defaults and help text on the fields; ``admin_ds.cli.args`` builds the argparse flags from them, so a
default or a help line is written once. Fields made without ``option`` are not flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any = dataclasses.MISSING, *, help: str, flags: tuple[str, ...] = (),
           default_factory: Any = dataclasses.MISSING, unset: str = "the preset's", **argparse_kwargs: Any) -> Any:
    """A dataclass field with a flag: ``flags`` default to ``--field-name``; other keywords go to argparse
    (``choices``, ``metavar``, ``type`` for a custom parser). A field without a default is a required flag.
    ``unset`` says what an override flag left out means (see ``admin_ds.cli.args.add_options``)."""
    metadata = {"help": help, "flags": flags, "unset": unset, "argparse": argparse_kwargs}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
