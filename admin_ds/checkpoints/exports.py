"""Model directories: config.json + model.safetensors, written and read holding one copy of the weights.

Two layouts (docs/contracts.md):
  - an fp32 export: config.json {"format": "admin-ds", "model": ModelConfig fields, ...} + model.safetensors
    (tied tables stored once; ``src_embed.positions`` / ``tgt_embed.positions`` only where they differ
    from the sinusoidal defaults, i.e. after ω_1 was folded into them);
  - a plain export: config.json with ``num_encoder_layers`` + model.safetensors in torch.nn's layout
    (``admin_ds.model.reparam``), rebuilt here as a Post-LN (or, with ``norm_first``, Pre-LN) model.
``WeightFiller`` is the one place that copies named tensors into a model and checks names and shapes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.rundir import TRAIN_CONFIG
from admin_ds.errors import UserError, first_line
from admin_ds.io import atomic_directory, read_json_object
from admin_ds.model import ModelConfig, TranslationModel
from admin_ds.model.embedding import sinusoidal_positions
from admin_ds.model.reparam import config_from_plain, model_targets

EXPORT_FORMAT = "admin-ds"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
POSITION_KEYS = {"src_embed.positions": "src_embed", "tgt_embed.positions": "tgt_embed"}


# --- safetensors ---------------------------------------------------------------------------------------
def write_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]], metadata: Optional[dict] = None) -> None:
    """Write named tensors with ``safetensors.torch.save_file``.

    From safetensors 0.8 on, save_file writes from the tensors' own memory: writing a 60-12 export (977 MiB)
    raised the peak RSS by 2 MiB, where 0.4.5 first copied every tensor into bytes (+979 MiB, one more
    copy of the model; measured for the redesign, docs/contracts.md). Hence the floor in setup.py.
    safetensors refuses tensors that share memory (tied tables, views), so a repeat is cloned.
    """
    from safetensors.torch import save_file

    named: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors:
        if name in named:
            raise ValueError(f"duplicate tensor name {name}")
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages and tensor.numel():
            tensor = tensor.clone()
        storages.add(storage)
        named[name] = tensor
    save_file(named, str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)


def safetensors_items(path: Path) -> Iterable[tuple[str, tuple, object]]:
    """(name, shape, load) for each tensor in a .safetensors file; ``load()`` reads that one tensor."""
    from safetensors import safe_open

    def guarded(action):
        try:
            return action()
        except Exception as err:  # truncated or malformed files raise safetensors' own error types
            raise UserError(f"cannot read {path} ({first_line(err)})") from None

    with guarded(lambda: safe_open(str(path), framework="pt")) as f:
        for name in guarded(f.keys):
            shape = guarded(lambda n=name: tuple(f.get_slice(n).get_shape()))
            yield name, shape, lambda n=name: guarded(lambda: f.get_tensor(n))


# --- filling a model from named tensors ------------------------------------------------------------------
class WeightFiller:
    """Copies named tensors into a model's weights, checking names and shapes, and reports the first
    weight that stays unfilled: a checkpoint of another architecture fails with the key that differs."""

    def __init__(self, model: TranslationModel, source: str):
        self.source = source
        self.targets = dict(model.state_dict(keep_vars=True))  # tied weights appear under every name
        for key, embed in POSITION_KEYS.items():
            self.targets[key] = getattr(model, embed).positions
        self.pending = {}
        for name, tensor in self.targets.items():
            if name not in POSITION_KEYS:
                self.pending.setdefault(id(tensor), name)

    def target(self, name: str, shape) -> torch.Tensor:
        if name not in self.targets:
            raise UserError(f"{self.source}: does not fit the model config: unexpected weight {name!r} "
                            f"(a checkpoint of another architecture?)")
        target = self.targets[name]
        if tuple(target.shape) != tuple(shape):
            raise UserError(f"{self.source}: does not fit the model config: {name} has shape {tuple(shape)} "
                            f"in the checkpoint but {tuple(target.shape)} in the model")
        self.pending.pop(id(target), None)
        return target.data

    def copy(self, name: str, tensor: torch.Tensor) -> None:
        with torch.no_grad():
            self.target(name, tensor.shape).copy_(tensor)

    def finish(self) -> None:
        if self.pending:
            raise UserError(f"{self.source}: does not fit the model config: no weight for "
                            f"{next(iter(self.pending.values()))!r}")


# --- writing model directories ---------------------------------------------------------------------------
def write_model_dir(out_dir: str | os.PathLike, config: dict, tensors: list[tuple[str, torch.Tensor]],
                    force: bool = False, files: Optional[dict[str, Path]] = None) -> Path:
    """config.json + model.safetensors (+ ``files``: name -> file to copy in); the directory appears only
    once complete, and an existing one is replaced only with ``force``."""
    with atomic_directory(out_dir, force) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        write_safetensors(tmp / WEIGHTS, tensors, metadata={"format": "pt"})
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
    return Path(out_dir)


def export_tensors(model: TranslationModel) -> list[tuple[str, torch.Tensor]]:
    """The fp32 export's tensors: each weight once (tied tables under their first name), in fp32, plus the
    position tables where they are not the sinusoidal defaults."""
    tensors, seen = [], set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors.append((name, tensor.detach().float()))
    for key, embed in POSITION_KEYS.items():
        positions = getattr(model, embed).positions
        if not torch.equal(positions.float(), sinusoidal_positions(*positions.shape)):
            tensors.append((key, positions.float()))
    return tensors


def write_export(model: TranslationModel, out_dir: str | os.PathLike, force: bool = False,
                 extra: dict | None = None, files: Optional[dict[str, Path]] = None) -> Path:
    """Write ``model`` as an fp32 export (see the module docstring)."""
    config = {"format": EXPORT_FORMAT, "model": model.cfg.to_dict(), **(extra or {})}
    return write_model_dir(out_dir, config, export_tensors(model), force, files)


# --- reading exports -------------------------------------------------------------------------------------
def read_config(path: Path) -> dict:
    return read_json_object(path, "config",
                            missing=f"{path.parent}: no config.json; not a checkpoint this package wrote")


def _weights_file(path: Path) -> Path:
    weights = path / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{path}: {WEIGHTS} is missing")
    return weights


def read_export(path: str | os.PathLike) -> TranslationModel:
    path = Path(path)
    config = read_config(path / CONFIG)
    if config.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: config.json is not an admin-ds export (format {config.get('format')!r})")
    model = TranslationModel(ModelConfig.from_dict(config["model"], source=str(path / CONFIG)))
    weights = _weights_file(path)
    filler = WeightFiller(model, str(weights))
    for name, shape, load in safetensors_items(weights):
        with torch.no_grad():
            filler.target(name, shape).copy_(load())
    filler.finish()
    return model


def read_plain_export(path: str | os.PathLike) -> TranslationModel:
    """A plain export rebuilt as a Post-LN (or Pre-LN) TranslationModel with untied tables."""
    path = Path(path)
    cfg, embed_scale = config_from_plain(read_config(path / CONFIG), str(path / CONFIG))
    model = TranslationModel(cfg)
    weights = _weights_file(path)
    expected = {id(p): name for name, p in model.named_parameters()}
    for name, shape, load in safetensors_items(weights):
        targets = model_targets(model, name)
        if not targets:
            raise UserError(f"{weights}: does not fit the plain config: unexpected weight {name!r}")
        rows = sum(end - start for _, start, end in targets)
        if rows != shape[0] or tuple(targets[0][0].shape[1:]) != tuple(shape[1:]):
            raise UserError(f"{weights}: does not fit the plain config: {name} has shape {tuple(shape)}")
        tensor = load()
        with torch.no_grad():
            for target, start, end in targets:
                target.copy_(tensor[start:end])
                expected.pop(id(target), None)
    if expected:
        raise UserError(f"{weights}: does not fit the plain config: no weight for {next(iter(expected.values()))!r}")
    if not math.isclose(embed_scale, model.src_embed.scale, rel_tol=1e-12):
        with torch.no_grad():  # our embedding multiplies by sqrt(D); move the difference into the tables
            for embed in (model.src_embed, model.tgt_embed):
                embed.table.weight.mul_(embed_scale / embed.scale)
    return model


# --- model configs beside a checkpoint ----------------------------------------------------------------
def model_config_from_file(path: str | os.PathLike) -> ModelConfig:
    """A ModelConfig from train_config.json, an fp32 export's config.json, or a bare ModelConfig dict."""
    path = Path(path)
    config = read_config(path)
    values = config["model"] if isinstance(config.get("model"), dict) else config
    return ModelConfig.from_dict({k: v for k, v in values.items() if k != "format"}, source=str(path))


def find_model_config(start: Path) -> Optional[ModelConfig]:
    for directory in (start, start.parent, start.parent.parent):
        for name in (TRAIN_CONFIG, CONFIG):
            candidate = directory / name
            if candidate.is_file() and isinstance(read_config(candidate).get("model"), dict):
                return model_config_from_file(candidate)
    return None
