"""A DeepSpeed engine's life: its config checked, ``initialize``, then checkpoints saved, loaded, and
converted to universal ones for a resume on another number of ranks."""

from __future__ import annotations

import difflib
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import deepspeed
import torch

from admin_ds.errors import UserError, first_line
from admin_ds.io import read_json_object
from admin_ds.training.engine.internals import (
    deepspeed_loads_weights_only,
    parse_like_initialize,
    run_ds_to_universal,
    set_universal_load,
)
from admin_ds.training.setup import KeysRead


# --- config -------------------------------------------------------------------------------------------
def read_ds_config(path: Optional[str]) -> dict:
    """Load a DeepSpeed JSON config; one-line errors for a missing or malformed file."""
    if path is None:
        return {}
    return read_json_object(Path(path), "DeepSpeed config")


def check_ds_config(config: dict) -> None:
    """Refuse, in one line, a DeepSpeed config that DeepSpeed would reject with a traceback, or that holds a
    top-level key DeepSpeed never reads (a misspelt ``zero_optimization`` would silently mean ZeRO-0).

    DeepSpeed's own parser is the judge: the config is parsed as ``deepspeed.initialize`` will parse it,
    and the keys it looked up are, by definition, the ones this DeepSpeed version knows."""
    from pydantic import ValidationError

    seen = KeysRead(config)
    try:
        parse_like_initialize(seen)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"DeepSpeed config: {err.title}.{where}: {first['msg']} "
                        f"(got {first.get('input')!r})") from None
    except Exception as err:  # DeepSpeed's own asserts and errors about values
        raise UserError(f"DeepSpeed config: {first_line(err)}") from None
    unknown = sorted(set(config) - seen.read)
    if unknown:
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(seen.read), n=1)
            named.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"DeepSpeed config: unknown key {', '.join(named)}; DeepSpeed {deepspeed.__version__} "
                        "would ignore it")


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def precision(config: dict) -> str:
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp32"


# --- initialize ---------------------------------------------------------------------------------------
def model_init_context(config: dict, enabled: bool):
    """``deepspeed.zero.Init`` (parameters partitioned as they are created) for ZeRO-3 when asked."""
    if enabled and zero_stage(config) == 3:
        return deepspeed.zero.Init(config_dict_or_path=config)
    if enabled:
        raise UserError("--zero-init needs ZeRO stage 3 in the DeepSpeed config")
    return nullcontext()


def initialize(model: torch.nn.Module, config: dict, optimizer=None, lr_scheduler=None, parameters=None):
    """``deepspeed.initialize`` with our client optimizer/scheduler (either may be None: config wins);
    ``parameters`` (default: all of the model's) is what a config-built optimizer trains, param groups allowed."""
    if optimizer is not None and zero_stage(config) > 0:
        # torch.optim optimizers other than Adam(W) are fine under ZeRO but DeepSpeed asks for consent.
        config.setdefault("zero_allow_untested_optimizer", True)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=parameters or list(model.parameters()),
                                           optimizer=optimizer, lr_scheduler=lr_scheduler, config=config)
    return engine


def zero_stage_of(engine) -> int:
    return int(engine.zero_optimization_stage())


# --- checkpoints --------------------------------------------------------------------------------------
def save_checkpoint(engine, save_dir: str | os.PathLike, tag: str, client_state: dict) -> None:
    """DeepSpeed's collective save (model, optimizer, scheduler, loss scaler) plus our ``client_state``.
    ``latest`` is left alone: training/saving.py publishes the tag once every rank's files are checked."""
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)


def load_checkpoint(engine, save_dir: str | os.PathLike, tag: Optional[str] = None,
                    universal: bool = False) -> Optional[dict]:
    """Load ``tag`` (default: the one named in ``latest``); returns our client_state, or None. ``universal``:
    a universal checkpoint (``convert_to_universal``), written on any number of ranks. Every file DeepSpeed
    reads, by its checkpoint engine or its universal loaders, is read weights-only."""
    set_universal_load(engine, universal)
    with deepspeed_loads_weights_only():
        path, client_state = engine.load_checkpoint(str(save_dir), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    if path is None:
        return None
    return client_state


def convert_to_universal(tag_dir: Path, out_dir: Path) -> None:
    """DeepSpeed's ``ds_to_universal`` of one ZeRO checkpoint, in this process, every file it reads weights-only."""
    with deepspeed_loads_weights_only():
        run_ds_to_universal(tag_dir, out_dir)
