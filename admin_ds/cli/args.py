"""Flags built from the config dataclasses, and the flag groups several commands share.

A config field made with ``admin_ds.options.option`` becomes ``--field-name`` (or the flags it names) with
the field's default, type and help; every ``--help`` shows the defaults. Parsed flags go back into the same
dataclass with ``options_from_args``, whose own validation then runs: defaults and help live on the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional

from admin_ds.model import PRESETS, ModelConfig
from admin_ds.training.config import DataConfig, ModelChoice

_SCALARS = (int, float, str, Path)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _scalar_type(hint: Any) -> Any:
    """int for ``int`` and ``Optional[int]``; None for types argparse cannot take directly."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return hint if hint in _SCALARS or hint is bool else None


def add_options(parser: argparse.ArgumentParser, cls: type, title: Optional[str] = None,
                overrides: bool = False) -> None:
    """Add a flag for every ``option`` field of dataclass ``cls`` (in a group called ``title``).

    ``overrides``: every flag defaults to None ("keep what the preset says"); switches become valued flags.
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        flags = field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",)
        kwargs = {"dest": field.name, "help": field.metadata["help"], **field.metadata["argparse"]}
        default, kind = _field_default(field), _scalar_type(hints[field.name])
        if overrides:
            kwargs["help"] += f" (default: {field.metadata['unset']})"
            kwargs.update(default=None, type=kwargs.get("type", kind))
        elif kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif default is dataclasses.MISSING:
            kwargs.update(required=True, type=kwargs.get("type", kind))
        else:
            kwargs.update(default=default, type=kwargs.get("type", kind))
        group.add_argument(*flags, **kwargs)


def options_from_args(cls: type, args: argparse.Namespace):
    """An instance of ``cls`` from the parsed flags of its fields, validated (the command line's edge)."""
    config = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    return config.validate() if hasattr(config, "validate") else config


# --- the groups several commands share -------------------------------------------------------------------
def add_model_options(parser: argparse.ArgumentParser, default_arch: str = "admin-6-6") -> None:
    """--arch and the ModelConfig fields that may override a preset (profile, train)."""
    group = parser.add_argument_group("model")
    group.add_argument("--arch", default=default_arch, help=f"preset: {', '.join(PRESETS)}")
    add_options(group, ModelConfig, overrides=True)


def model_choice_from_args(args: argparse.Namespace) -> ModelChoice:
    names = [f.name for f in dataclasses.fields(ModelConfig) if "help" in f.metadata]
    return ModelChoice(args.arch, {name: getattr(args, name) for name in names})


def add_data_options(parser: argparse.ArgumentParser) -> None:
    add_options(parser, DataConfig, "data")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    return options_from_args(DataConfig, args)
