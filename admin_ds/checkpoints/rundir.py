"""The run directory of ``admin-ds train``: the one place that names its files, for writers and readers.

    SAVE_DIR/latest                       the tag of the newest complete checkpoint ("global_step800")
    SAVE_DIR/global_stepN/                DeepSpeed's checkpoint of update N (model, optimizer, scheduler,
                                          our client_state: step, data position, model config, ω)
    SAVE_DIR/global_stepN/rng_state_rankR.pt   rank R's RNG streams (dropout differs per rank)
    SAVE_DIR/train_config.json            {"model", "train", "data" (absolute path), "seed", "world_size"}
    SAVE_DIR/ds_config.json               the DeepSpeed config the run used
    SAVE_DIR/metrics.jsonl                one JSON object per logged step and per validation
    SAVE_DIR/omega.profile                ω after the rank-0 hook, in the profile.ratio.init format
    SAVE_DIR/tensorboard/                 the same scalars for TensorBoard
    SAVE_DIR/universal/global_stepN/      DeepSpeed's universal form of checkpoint N, made when a run resumed
                                          it on another number of ranks (removed at the next save)
    SAVE_DIR/run.lock                     the run that holds the directory now: host, PID, SLURM job
                                          (checkpoints/runlock.py; removed when that run's process exits)

The tokenizer of a checkpoint is found by ``find_spm`` (see its docstring); exports record it as
``"spm_model"`` in their config.json.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.ctranslate2_export import CT2_INFO
from admin_ds.data import load_meta
from admin_ds.errors import UserError
from admin_ds.io import read_json_or_empty, write_json_atomic

LATEST = "latest"
TRAIN_CONFIG = "train_config.json"
DS_CONFIG = "ds_config.json"
METRICS = "metrics.jsonl"
OMEGA_PROFILE = "omega.profile"
TENSORBOARD = "tensorboard"
UNIVERSAL = "universal"
RUN_LOCK = "run.lock"
SPM_BESIDE = "spm.model"
_STEP_TAG = re.compile(r"global_step(\d+)")
HIGHER_IS_BETTER = ("bleu", "chrf")  # validation fields of metrics.jsonl where higher is better (lower: the losses)


# --- checkpoint tags -------------------------------------------------------------------------------------
def step_tag(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> Optional[int]:
    """N of "global_stepN", else None."""
    match = _STEP_TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def step_dirs(save_dir: str | os.PathLike) -> list[Path]:
    """The ``global_stepN`` folders of a run, oldest first."""
    found = [(step_of(p.name), p) for p in Path(save_dir).iterdir() if p.is_dir() and step_of(p.name) is not None]
    return [path for _, path in sorted(found)]


def latest_tag(save_dir: str | os.PathLike) -> Optional[str]:
    """The tag ``latest`` names, or None when the run has none yet."""
    latest = Path(save_dir) / LATEST
    return latest.read_text(encoding="utf-8").strip() if latest.is_file() else None


def rng_state_file(save_dir: str | os.PathLike, tag: str, rank: int) -> Path:
    return Path(save_dir) / tag / f"rng_state_rank{rank}.pt"


def prunable(save_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Checkpoints beyond the newest ``keep_last``; never the one ``latest`` names."""
    latest = latest_tag(save_dir)
    return [p for p in step_dirs(save_dir)[:-keep_last] if p.name != latest]


# --- train_config.json -----------------------------------------------------------------------------------
def write_run_config(save_dir: str | os.PathLike, model: dict, train: dict, data_dir: str | os.PathLike,
                     seed: int, world_size: int) -> Path:
    """train_config.json; the data directory is recorded absolute, so readers find it from anywhere."""
    return write_json_atomic(Path(save_dir) / TRAIN_CONFIG, {
        "model": model, "train": train, "data": str(Path(data_dir).resolve()), "seed": seed,
        "world_size": world_size})


def read_run_config(save_dir: str | os.PathLike) -> dict:
    """train_config.json of a run, or {} when there is none (or it cannot be read)."""
    return read_json_or_empty(Path(save_dir) / TRAIN_CONFIG)


# --- the tokenizer of a checkpoint -----------------------------------------------------------------------
def find_spm(checkpoint: str | os.PathLike, spm: Optional[str] = None, tgt_spm: Optional[str] = None,
             data: Optional[str] = None) -> tuple[Path, Path]:
    """(source, target) sentencepiece models of a checkpoint; first match wins:

    1. ``spm`` (and ``tgt_spm`` for a separate target vocabulary);
    2. ``data``: the model(s) named in the prepared dataset's meta.json;
    3. beside the checkpoint (see ``spm_beside``), then in its parent folder (so ``SAVE_DIR/global_stepN``
       finds what ``SAVE_DIR`` holds).
    """
    if spm:
        return Path(spm), Path(tgt_spm or spm)
    if tgt_spm:
        raise UserError("--tgt-spm needs --spm for the source side")
    if data:
        info = load_meta(data)
        return info.src_spm_path, info.tgt_spm_path
    found = spm_near(checkpoint)
    if found is None:
        raise UserError(f"no sentencepiece model found for {checkpoint}: pass --spm PATH (or --data DIR), or "
                        f"put {SPM_BESIDE} beside the checkpoint")
    return found


def spm_near(checkpoint: str | os.PathLike) -> Optional[tuple[Path, Path]]:
    """``spm_beside`` of the checkpoint's folder, else of its parent; None when neither has one."""
    start = Path(checkpoint)
    for directory in (start, start.parent):
        found = spm_beside(directory)
        if found is not None:
            return found
    return None


def spm_beside(directory: Path) -> Optional[tuple[Path, Path]]:
    """The "spm_model" entry (a path, or {"src", "tgt"}, relative to ``directory`` or absolute) of an
    export's config.json or a CTranslate2 export's info file, a file spm.model, or the prepared dataset that
    train_config.json's "data" names."""
    for info_file in ("config.json", CT2_INFO):
        entry = read_json_or_empty(directory / info_file).get("spm_model")
        if isinstance(entry, str):
            return directory / entry, directory / entry
        if isinstance(entry, dict) and "src" in entry and "tgt" in entry:
            return directory / entry["src"], directory / entry["tgt"]
    if (directory / SPM_BESIDE).is_file():
        return directory / SPM_BESIDE, directory / SPM_BESIDE
    data = read_run_config(directory).get("data")
    if isinstance(data, str):
        # Runs record it absolute; older ones recorded it as given, relative to where training ran.
        for data_dir in dict.fromkeys([Path(data), directory / data]):
            if (data_dir / "meta.json").is_file():
                info = load_meta(data_dir)
                return info.src_spm_path, info.tgt_spm_path
    return None


def tokenizer_files(checkpoint: str | os.PathLike) -> Optional[tuple[dict[str, Path], object]]:
    """The sentencepiece model(s) of a checkpoint, as exports carry them: (file name in the export ->
    file to copy there, the config.json "spm_model" entry that names them). None when none is found,
    which the caller reports: an export without its tokenizer cannot translate text."""
    try:
        found = spm_near(checkpoint)
    except UserError:
        return None
    if found is None or not all(path.is_file() for path in found):
        return None
    src, tgt = found
    if src.resolve() == tgt.resolve():
        return {SPM_BESIDE: src}, SPM_BESIDE
    return {"spm.src.model": src, "spm.tgt.model": tgt}, {"src": "spm.src.model", "tgt": "spm.tgt.model"}
