"""Reading every checkpoint this package writes, and writing model directories, holding one copy of the weights.

``load_model(path)`` accepts:
  - an fp32 export: config.json {"format": "admin-ds", "model": ModelConfig fields, ...} + model.safetensors
    (tied tables stored once; ``src_embed.positions`` / ``tgt_embed.positions`` only where they differ
    from the sinusoidal defaults, i.e. after ω_1 was folded into them);
  - a plain export (design.md contract 4): config.json with ``num_encoder_layers`` + model.safetensors,
    rebuilt as a Post-LN (or, with ``norm_first``, Pre-LN) model;
  - a DeepSpeed training directory (``latest`` picks the tag) or one ``global_stepN`` inside it, at any ZeRO
    stage and world size (read by convert.py: ZeRO-0 keeps the whole model in ``mp_rank_00_model_states.pt``;
    ZeRO-1/2/3 keep the fp32 master weights in one ``*_optim_states.pt`` shard per rank, read one at a time);
  - a state dict file (.pt/.bin/.safetensors, or a folder holding one) such as DeepSpeed's zero_to_fp32.py
    writes, with its model config from ``config=`` or a train_config.json up to two folders above.
Only DeepSpeed training directories need deepspeed installed (their pickles hold DeepSpeed objects).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch

from admin_ds.errors import UserError
from admin_ds.jsonio import read_json_object
from admin_ds.model import ModelConfig, TranslationModel
from admin_ds.model.embedding import sinusoidal_positions

EXPORT_FORMAT = "admin-ds"
WEIGHTS = "model.safetensors"
TRAIN_CONFIG = "train_config.json"
POSITION_KEYS = {"src_embed.positions": "src_embed", "tgt_embed.positions": "tgt_embed"}
STATE_DICT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors",
                    "pytorch_model.bin", "pytorch_model.pt")


# --- safetensors, one tensor at a time -------------------------------------------------------------------
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]], metadata: Optional[dict] = None) -> None:
    """Write a .safetensors file tensor by tensor: no second in-memory copy of the weights (safetensors'
    own save_file serialises every tensor to bytes before writing). Names must be unique."""
    header, offset = {}, 0
    for name, tensor in tensors:
        if name in header:
            raise ValueError(f"duplicate tensor name {name}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, tensor in tensors:
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            f.write(flat.view(torch.uint8).numpy().data if flat.numel() else b"")


def _safetensors_items(path: Path) -> Iterable[tuple[str, tuple, object]]:
    """(name, shape, load) for each tensor in a .safetensors file; ``load()`` reads that one tensor."""
    from safetensors import safe_open

    def guarded(action):
        try:
            return action()
        except Exception as err:  # truncated or malformed files raise safetensors' own error types
            raise UserError(f"cannot read {path} ({first_line(err)})") from None

    with guarded(lambda: safe_open(str(path), framework="pt")) as f:
        for name in guarded(f.keys):
            shape = guarded(lambda: tuple(f.get_slice(name).get_shape()))
            yield name, shape, lambda n=name: guarded(lambda: f.get_tensor(n))


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"output {out_dir} exists; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_safetensors(tmp / WEIGHTS, tensors, metadata={"format": "pt"})
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace(new: Path, target: Path) -> None:
    """Move a finished directory into place, removing an old one only after the new one is complete."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


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
    config = read_config(path / "config.json")
    if config.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: config.json is not an admin-ds export (format {config.get('format')!r})")
    model = TranslationModel(ModelConfig.from_dict(config["model"], source=str(path / "config.json")))
    weights = _weights_file(path)
    filler = WeightFiller(model, str(weights))
    for name, shape, load in _safetensors_items(weights):
        with torch.no_grad():
            filler.target(name, shape).copy_(load())
    filler.finish()
    return model


def read_plain_export(path: str | os.PathLike) -> TranslationModel:
    """A plain export rebuilt as a Post-LN (or Pre-LN) TranslationModel with untied tables."""
    from admin_ds.reparam import config_from_plain, model_targets

    path = Path(path)
    cfg, embed_scale = config_from_plain(read_config(path / "config.json"), str(path / "config.json"))
    model = TranslationModel(cfg)
    weights = _weights_file(path)
    expected = {id(p): name for name, p in model.named_parameters()}
    for name, shape, load in _safetensors_items(weights):
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


# --- state dict files (DeepSpeed's zero_to_fp32.py output) ----------------------------------------------
def model_config_from_file(path: str | os.PathLike) -> ModelConfig:
    """A ModelConfig from train_config.json, an fp32 export's config.json, or a bare ModelConfig dict."""
    path = Path(path)
    config = read_config(path)
    values = config["model"] if isinstance(config.get("model"), dict) else config
    return ModelConfig.from_dict({k: v for k, v in values.items() if k != "format"}, source=str(path))


def find_model_config(start: Path) -> Optional[ModelConfig]:
    for directory in (start, start.parent, start.parent.parent):
        for name in (TRAIN_CONFIG, "config.json"):
            candidate = directory / name
            if candidate.is_file() and isinstance(read_config(candidate).get("model"), dict):
                return model_config_from_file(candidate)
    return None


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
            for name, shape, load in _safetensors_items(file):
                with torch.no_grad():
                    filler.target(name, shape).copy_(load())
            continue
        state = torch_load(file, weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("module"), dict):
            state = state["module"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{file}: not a state dict of tensors")
        for name, tensor in state.items():
            filler.copy(name, tensor)
        del state
    filler.finish()
    return model, {"source": str(path)}


# --- DeepSpeed files ----------------------------------------------------------------------------------
def torch_load(file: Path, weights_only: bool = False):
    """torch.load memory-mapped (only what is read becomes resident), with one-line errors."""
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=weights_only)
    except ModuleNotFoundError as err:
        raise UserError(f"cannot read {file}: it needs the module {err.name!r} (DeepSpeed checkpoints "
                        "need deepspeed installed)") from None
    except Exception as err:  # truncated archives, pickles of unknown objects, ...
        raise UserError(f"cannot read {file} ({first_line(err)})") from None


def model_states_file(directory: Path) -> Optional[Path]:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_deepspeed_dir(path: Path) -> bool:
    return ((path / "latest").is_file() or model_states_file(path) is not None
            or any(p.is_dir() for p in path.glob("global_step*")))


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
    if path.is_dir() and (path / "config.json").is_file():
        settings = read_config(path / "config.json")
        if settings.get("format") == EXPORT_FORMAT:
            return read_export(path), {"source": str(path), "format": EXPORT_FORMAT}
        if "num_encoder_layers" in settings:
            return read_plain_export(path), {"source": str(path), "format": "plain"}
        if not deepspeed_dir and not any((path / name).is_file() for name in STATE_DICT_FILES):
            raise UserError(f"{path}: config.json is neither an admin-ds export nor a plain export")
    if deepspeed_dir or (path.is_file() and path.name.endswith("_model_states.pt")):
        from admin_ds.convert import read_deepspeed_checkpoint  # the ZeRO layouts live with the converter

        return read_deepspeed_checkpoint(path if deepspeed_dir else path.parent, tag, config)
    return read_state_dict_file(path, config)


def load_model(path: str | os.PathLike, tag: Optional[str] = None,
               config: Optional[str | os.PathLike | ModelConfig] = None) -> TranslationModel:
    """Load any checkpoint this package writes (module docstring), in eval mode, on the CPU."""
    return load_checkpoint(path, tag, config)[0].eval()
