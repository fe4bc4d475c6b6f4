"""The on-disk layout of a prepared dataset and its description, `meta.json`.

A directory written by `admin-ds prepare --out DIR` holds:

    DIR/meta.json              what `load_meta` reads (format below)
    DIR/spm.model              the joint SentencePiece model, or with --separate-vocab
    DIR/spm.SRC.model          one model per language
    DIR/spm.TGT.model
    DIR/SPLIT.LANG.bin         token ids of every kept sentence, concatenated, no BOS/EOS   [total_tokens]
    DIR/SPLIT.LANG.idx         int64 offsets into the .bin; sentence i is bin[idx[i]:idx[i+1]]   [n + 1]
    DIR/SPLIT.LANG.txt         a copy of the raw text of the valid and test splits, both sides, every line

for SPLIT in train, valid (and test when given) and LANG in the two languages. The .bin files use the
smallest unsigned integer type that holds every id (`meta["dtype"]`), so they can be memory-mapped as is.

meta.json:

    {"format": "admin-ds-binarized", "version": 1,
     "source_lang": "de", "target_lang": "en", "joint_vocab": true,
     "spm_model": {"src": "spm.model", "tgt": "spm.model"},
     "vocab_size": {"src": 8000, "tgt": 8000},
     "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
     "dtype": "uint16", "max_positions": 1024,
     "splits": {"train": {"lines": ..., "examples": ..., "src_tokens": ..., "tgt_tokens": ...,
                          "dropped": {"empty": ..., "too_long": ...}}, ...},
     "dropped": {"empty": ..., "too_long": ...},
     "spm_trained": true, "model_type": "bpe",
     "raw": {"valid": {"src": "valid.de.txt", "tgt": "valid.en.txt"}, "test": {...}}}

"raw" names the raw text that BLEU is scored against (`admin-ds evaluate --data --split`, `train --eval-bleu`).
`prepare` copies the valid and test files into DIR, so the paths are relative to DIR and the folder can move
(or be copied to a cluster) with its references; an absolute path is read as it is. A meta.json without
"raw" (written before it existed), or without a split in it, has no raw text recorded for that split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from admin_ds.errors import UserError
from admin_ds.vocab import SPECIAL_IDS, SpecialIds

META_FILE = "meta.json"
FORMAT_NAME = "admin-ds-binarized"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
DROP_REASONS = ("empty", "too_long")
RAW_SPLITS = ("valid", "test")  # the splits whose raw text `prepare` copies: scoring needs them, training does not


def token_file(data_dir: Path, split: str, lang: str) -> Path:
    return Path(data_dir) / f"{split}.{lang}.bin"


def offset_file(data_dir: Path, split: str, lang: str) -> Path:
    return Path(data_dir) / f"{split}.{lang}.idx"


def raw_file(data_dir: Path, split: str, lang: str) -> Path:
    """Where `prepare` copies a split's raw text: DIR/SPLIT.LANG.txt."""
    return Path(data_dir) / f"{split}.{lang}.txt"


def spm_file_names(source_lang: str, target_lang: str, joint: bool) -> dict[str, str]:
    """File names of the SentencePiece model(s) inside a prepared directory, keyed "src"/"tgt"."""
    if joint:
        return {"src": "spm.model", "tgt": "spm.model"}
    return {"src": f"spm.{source_lang}.model", "tgt": f"spm.{target_lang}.model"}


def smallest_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds ids 0 .. vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise UserError(f"vocabulary of {vocab_size} ids is too large")


@dataclass(frozen=True)
class DataInfo:
    """What the rest of the package needs to know about a prepared dataset."""

    data_dir: Path  # absolute
    source_lang: str
    target_lang: str
    src_vocab_size: int
    tgt_vocab_size: int
    src_spm_path: Path
    tgt_spm_path: Path
    joint_vocab: bool
    dtype: np.dtype
    max_positions: int
    split_sizes: dict[str, int]  # split name -> number of kept examples
    special_ids: SpecialIds = SPECIAL_IDS
    raw_text: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # split -> (source, reference) files


def load_meta(data_dir: str | Path) -> DataInfo:
    """Read and check `DIR/meta.json`; a UserError says what is wrong when DIR is not a prepared dataset."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist; create it with `admin-ds prepare --out {data_dir}`")
    meta_path = data_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{data_dir} is not a prepared dataset (no {META_FILE}); create it with `admin-ds prepare`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        special = SpecialIds.from_dict(meta["special_ids"], str(meta_path))
        if special != SPECIAL_IDS:
            raise ValueError(f"special ids {special.to_dict()} differ from admin-ds's {SPECIAL_IDS.to_dict()}")
        info = DataInfo(
            data_dir=data_dir,
            source_lang=meta["source_lang"],
            target_lang=meta["target_lang"],
            src_vocab_size=int(meta["vocab_size"]["src"]),
            tgt_vocab_size=int(meta["vocab_size"]["tgt"]),
            src_spm_path=data_dir / meta["spm_model"]["src"],
            tgt_spm_path=data_dir / meta["spm_model"]["tgt"],
            joint_vocab=bool(meta["joint_vocab"]),
            dtype=np.dtype(meta["dtype"]),
            max_positions=int(meta["max_positions"]),
            split_sizes={name: int(split["examples"]) for name, split in meta["splits"].items()},
            special_ids=special,
            raw_text=_raw_text(data_dir, meta.get("raw") or {}),
        )
    except KeyError as error:
        raise UserError(f"{meta_path} is not a valid admin-ds dataset description (missing key {error})") from None
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(f"{meta_path} is not a valid admin-ds dataset description ({error})") from None
    return info


def _raw_text(data_dir: Path, raw: dict) -> dict[str, tuple[Path, Path]]:
    """meta.json's "raw" as split -> (source file, reference file); relative paths are inside DIR."""
    return {split: (data_dir / files["src"], data_dir / files["tgt"]) for split, files in raw.items()}
