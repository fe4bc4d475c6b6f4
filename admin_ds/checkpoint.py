"""Model files without DeepSpeed: the fp32 export (config.json + model.safetensors) and ``load_model``.

Layout of an fp32 export directory:
    config.json        {"format": "admin-ds", "model": ModelConfig fields, "omega": {...}} (+ extra keys)
    model.safetensors  the model's state dict in fp32; tied tables are stored once
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from admin_ds.errors import UserError
from admin_ds.model import ModelConfig, TranslationModel

EXPORT_FORMAT = "admin-ds"


def write_export(model: TranslationModel, out_dir: str | os.PathLike, force: bool = False,
                 extra: dict | None = None) -> Path:
    """Write ``model`` as an fp32 export; the directory appears only once complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"output {out_dir} exists; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = {"format": EXPORT_FORMAT, "model": model.cfg.to_dict(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        fp32 = TranslationModel(model.cfg)
        fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        save_safetensors_model(fp32, str(tmp / "model.safetensors"))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished directory into place, removing an old one only after the new one is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def read_export(path: str | os.PathLike) -> TranslationModel:
    path = Path(path)
    config = read_config(path / "config.json")
    if config.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: config.json is not an admin-ds export (format {config.get('format')!r})")
    model = TranslationModel(ModelConfig.from_dict(config["model"], source=str(path / "config.json")))
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{path}: model.safetensors is missing")
    try:
        missing, unexpected = load_safetensors_model(model, str(weights), strict=False)
    except Exception as err:  # safetensors reports truncation and shape mismatches with its own types
        raise UserError(f"{weights}: cannot load weights ({str(err).splitlines()[0]})") from None
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not fit the config (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    return model


def read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no config.json; not a checkpoint this package wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: malformed JSON ({err})") from None


def load_model(path: str | os.PathLike) -> TranslationModel:
    """Load any model directory this package writes, in eval mode, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if (path / "config.json").is_file():
        model = read_export(path)
    else:
        raise UserError(f"{path}: not a checkpoint this package wrote (no config.json)")
    return model.eval()
