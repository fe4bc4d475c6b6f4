"""``load_model``: every checkpoint this package writes (and DeepSpeed's zero_to_fp32 output), as a model.

``load_model(path)`` accepts:
  - an fp32 export or a plain export (``exports.py``);
  - a DeepSpeed training directory (``latest`` picks the tag) or one ``global_stepN`` inside it, at any ZeRO
    stage and world size (``zero.py``: ZeRO-0 keeps the whole model in ``mp_rank_00_model_states.pt``;
    ZeRO-1/2/3 keep the fp32 master weights in one ``*_optim_states.pt`` shard per rank, read one at a time);
  - a state dict file (.pt/.bin/.safetensors, or a folder holding one) such as DeepSpeed's zero_to_fp32.py
    writes, with its model config from ``config=`` or a train_config.json up to two folders above.
Nothing beyond tensors is unpickled (pickles.py): the DeepSpeed objects in its optimizer shards are read as
inert records, so no checkpoint can run code here, and none needs deepspeed installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.exports import (
    CONFIG,
    EXPORT_FORMAT,
    WeightFiller,
    find_model_config,
    model_config_from_file,
    read_config,
    read_export,
    read_plain_export,
    safetensors_items,
)
from admin_ds.checkpoints.pickles import torch_load
from admin_ds.checkpoints.rundir import TRAIN_CONFIG
from admin_ds.checkpoints.zero import is_deepspeed_dir, read_deepspeed_checkpoint
from admin_ds.errors import UserError
from admin_ds.model import ModelConfig, TranslationModel

STATE_DICT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors",
                    "pytorch_model.bin", "pytorch_model.pt")


# --- state dict files (DeepSpeed's zero_to_fp32.py output) ----------------------------------------------
def read_state_dict_file(path: Path, config: Optional[ModelConfig] = None) -> tuple[TranslationModel, dict]:
    """A state dict file (or index of shards, or a folder with one of those) into a model."""
    if path.is_dir():
        found = [path / name for name in STATE_DICT_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"{path}: not a checkpoint (no config.json, no DeepSpeed files, no state dict file)")
        path = found[0]
    cfg = config or find_model_config(path.parent)
    if cfg is None:
        raise UserError(f"{path}: no model config found ({TRAIN_CONFIG} beside it or up to two folders above); "
                        "pass --config FILE")
    files = [path]
    if path.name.endswith(".index.json"):
        weight_map = read_config(path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{path}: no weight_map")
        files = [path.parent / name for name in dict.fromkeys(weight_map.values())]
    model = TranslationModel(cfg)
    filler = WeightFiller(model, str(path))
    for file in files:
        if file.suffix == ".safetensors":
            for name, shape, load in safetensors_items(file):
                with torch.no_grad():
                    filler.target(name, shape).copy_(load())
            continue
        state = torch_load(file)
        if isinstance(state, dict) and isinstance(state.get("module"), dict):
            state = state["module"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{file}: not a state dict of tensors")
        for name, tensor in state.items():
            filler.copy(name, tensor)
        del state
    filler.finish()
    return model, {"source": str(path)}


# --- one entry point -----------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, tag: Optional[str] = None,
                    config: Optional[str | os.PathLike | ModelConfig] = None) -> tuple[TranslationModel, dict]:
    """(model in fp32 on the CPU, where it came from) for any checkpoint named in the module docstring."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if config is not None and not isinstance(config, ModelConfig):
        config = model_config_from_file(config)
    deepspeed_dir = path.is_dir() and is_deepspeed_dir(path)
    if tag is not None and not deepspeed_dir:
        raise UserError(f"{path}: --tag only applies to DeepSpeed checkpoint directories")
    if path.is_dir() and (path / CONFIG).is_file():
        settings = read_config(path / CONFIG)
        if settings.get("format") == EXPORT_FORMAT:
            return read_export(path), {"source": str(path), "format": EXPORT_FORMAT}
        if "num_encoder_layers" in settings:
            return read_plain_export(path), {"source": str(path), "format": "plain"}
        if not deepspeed_dir and not any((path / name).is_file() for name in STATE_DICT_FILES):
            raise UserError(f"{path}: config.json is neither an admin-ds export nor a plain export")
    if deepspeed_dir or (path.is_file() and path.name.endswith("_model_states.pt")):
        return read_deepspeed_checkpoint(path if deepspeed_dir else path.parent, tag, config)
    return read_state_dict_file(path, config)


def load_model(path: str | os.PathLike, tag: Optional[str] = None,
               config: Optional[str | os.PathLike | ModelConfig] = None) -> TranslationModel:
    """Load any checkpoint this package writes (module docstring), in eval mode, on the CPU."""
    return load_checkpoint(path, tag, config)[0].eval()
