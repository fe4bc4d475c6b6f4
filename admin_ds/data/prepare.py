"""Preparing a corpus (`admin-ds prepare`): parallel text in, a prepared dataset directory out.

Steps: check every input (files exist, UTF-8, equal line counts) before writing anything; train a
SentencePiece model on the training split (joint by default) or reuse a given one; encode every split in
parallel; drop empty and over-long pairs, counting them per reason; write arrays and `meta.json`.

Everything is written into a temporary directory next to `--out` and renamed into place at the end, so a
failed or interrupted run leaves no half-written output; with `--force` an old output is replaced only once
the new one is complete. The layout of the result is documented in `admin_ds.data.meta`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from admin_ds.data import meta as layout
from admin_ds.data.binarize import encode_lines, filter_pairs, write_indexed
from admin_ds.data.textio import check_exists, parallel_paths, read_parallel
from admin_ds.data.tokenizer import MODEL_TYPES, Tokenizer, train_sentencepiece
from admin_ds.errors import UserError
from admin_ds.io import atomic_directory
from admin_ds.options import option
from admin_ds.vocab import SPECIAL_IDS

logger = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    """Settings of `prepare`; checked on construction, so a bad value fails before any work is done."""

    train_prefix: Path = option(help="training files PREFIX.SRC and PREFIX.TGT")
    valid_prefix: Path = option(help="validation files PREFIX.SRC and PREFIX.TGT")
    source_lang: str = option(help="source language code, the files' suffix (e.g. de)")
    target_lang: str = option(help="target language code, the files' suffix (e.g. en)")
    out_dir: Path = option(help="output directory (must not exist unless --force)", flags=("--out",))
    test_prefix: Optional[Path] = option(None, help="optional test files PREFIX.SRC and PREFIX.TGT")
    vocab_size: int = option(8000, help="sentencepiece vocabulary size (a soft limit: small corpora give fewer)")
    model_type: str = option("bpe", help="sentencepiece model type", choices=MODEL_TYPES)
    separate_vocab: bool = option(False, help="one sentencepiece model per language instead of a joint one")
    spm_model: Optional[Path] = option(None, help="reuse this sentencepiece .model (the source's with "
                                                  "--separate-vocab) instead of training one")
    spm_model_tgt: Optional[Path] = option(None, help="with --separate-vocab and --spm-model: the target's model")
    max_positions: int = option(1024, help="drop pairs with a side longer than this many tokens, EOS/BOS included")
    workers: int = option(help="encoding and training threads", default_factory=lambda: os.cpu_count() or 1)
    force: bool = option(False, help="replace an existing output directory")
    character_coverage: float = option(1.0, help="sentencepiece character coverage (lower for languages "
                                                 "with huge alphabets)")
    progress: bool = True  # show a tqdm bar on stderr

    def __post_init__(self):
        for name in ("train_prefix", "valid_prefix", "out_dir", "test_prefix", "spm_model", "spm_model_tgt"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        for name, lang in (("source", self.source_lang), ("target", self.target_lang)):
            if not lang or any(c in lang for c in "/\\. ") :
                raise UserError(f"--{name}-lang must be a plain language code such as 'de', got {lang!r}")
        if self.source_lang == self.target_lang:
            raise UserError(f"--source-lang and --target-lang are both {self.source_lang!r}; they must differ")
        if self.model_type not in MODEL_TYPES:
            raise UserError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")
        if self.vocab_size <= 4:
            raise UserError(f"--vocab-size must be larger than the 4 special ids, got {self.vocab_size}")
        if self.max_positions < 2:
            raise UserError(f"--max-positions must be at least 2 (one id plus EOS), got {self.max_positions}")
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise UserError(f"--character-coverage must be in (0, 1], got {self.character_coverage}")
        if self.spm_model_tgt is not None and not (self.separate_vocab and self.spm_model is not None):
            raise UserError("--spm-model-tgt needs --separate-vocab and --spm-model (the source model)")
        if self.separate_vocab and self.spm_model is not None and self.spm_model_tgt is None:
            raise UserError("with --separate-vocab, reusing models needs both --spm-model and --spm-model-tgt")

    @property
    def splits(self) -> dict[str, Path]:
        """Split name -> prefix, in the order they are processed."""
        prefixes = {"train": self.train_prefix, "valid": self.valid_prefix}
        if self.test_prefix is not None:
            prefixes["test"] = self.test_prefix
        return prefixes


def summary(meta: dict, out_dir) -> str:
    """A short human report: examples per split and dropped pairs per reason."""
    lines = [f"prepared {out_dir}: {meta['source_lang']}->{meta['target_lang']}, "
             f"vocab {meta['vocab_size']['src']}/{meta['vocab_size']['tgt']}, ids stored as {meta['dtype']}"]
    for name, split in meta["splits"].items():
        dropped = ", ".join(f"{count} {reason}" for reason, count in split["dropped"].items())
        lines.append(f"  {name}: {split['examples']} of {split['lines']} pairs kept (dropped: {dropped})")
    total = ", ".join(f"{count} {reason}" for reason, count in meta["dropped"].items())
    lines.append(f"  dropped in total: {total}")
    return "\n".join(lines)


def prepare(config: PrepareConfig) -> dict:
    """Build the prepared dataset described by `config` and return its metadata (the `meta.json` content)."""
    out_dir = config.out_dir
    _check_output(out_dir, config.force)
    for path, flag in ((config.spm_model, "--spm-model"), (config.spm_model_tgt, "--spm-model-tgt")):
        if path is not None and not path.is_file():
            raise UserError(f"sentencepiece model {path} does not exist (from {flag})")
    # Read and check every input before writing anything.
    texts = {}
    for name, prefix in config.splits.items():
        for path in parallel_paths(prefix, config.source_lang, config.target_lang):
            check_exists(path, f"--{name}-prefix")
    for name, prefix in config.splits.items():
        texts[name] = read_parallel(prefix, config.source_lang, config.target_lang, f"--{name}-prefix")
    if not any(src and tgt for src, tgt in zip(*texts["train"])):
        raise UserError(f"the training split {config.train_prefix} has no pair with text on both sides")

    with atomic_directory(out_dir, force=True) as tmp_dir:  # _check_output applied --force's rules
        meta = _build(config, texts, tmp_dir)
    logger.info("%s", summary(meta, out_dir))
    return meta


def _check_output(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not force:
        raise UserError(f"output directory {out_dir} already exists; pass --force to replace it")
    # --force must not wipe an arbitrary directory that a typo pointed at.
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / layout.META_FILE).is_file():
        raise UserError(f"refusing to replace {out_dir}: it is not empty and not a prepared dataset (no meta.json)")
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")


def _tokenizers(config: PrepareConfig, tmp_dir: Path) -> tuple[Tokenizer, Tokenizer, dict]:
    """Train or load the model(s), leaving copies under their final names in `tmp_dir`."""
    names = layout.spm_file_names(config.source_lang, config.target_lang, joint=not config.separate_vocab)
    src_path, tgt_path = parallel_paths(config.train_prefix, config.source_lang, config.target_lang)
    if config.spm_model is not None:
        given = {"src": config.spm_model, "tgt": config.spm_model_tgt or config.spm_model}
        for side in ("src", "tgt"):
            Tokenizer(given[side])  # refused, if it must be, under the name the user gave
            shutil.copyfile(given[side], tmp_dir / names[side])
    elif config.separate_vocab:
        for side, path in (("src", src_path), ("tgt", tgt_path)):
            _train(config, [path], tmp_dir / names[side])
    else:
        _train(config, [src_path, tgt_path], tmp_dir / names["src"])
    src_tok = Tokenizer(tmp_dir / names["src"])
    tgt_tok = src_tok if names["src"] == names["tgt"] else Tokenizer(tmp_dir / names["tgt"])
    return src_tok, tgt_tok, names


def _train(config: PrepareConfig, files: list[Path], model_path: Path) -> None:
    prefix = model_path.with_suffix("")
    train_sentencepiece(files, prefix, config.vocab_size, config.model_type,
                        character_coverage=config.character_coverage, num_threads=config.workers)
    prefix.with_suffix(".vocab").unlink(missing_ok=True)  # the .model holds everything we need


def _build(config: PrepareConfig, texts: dict, tmp_dir: Path) -> dict:
    src_tok, tgt_tok, spm_names = _tokenizers(config, tmp_dir)
    dtype = layout.smallest_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))
    splits = {}
    total_lines = sum(2 * len(src) for src, _ in texts.values())
    with tqdm(total=total_lines, unit="line", desc="encode", disable=not config.progress) as bar:
        for name, (src_lines, tgt_lines) in texts.items():
            src = encode_lines(src_tok, src_lines, config.workers, bar)
            tgt = encode_lines(tgt_tok, tgt_lines, config.workers, bar)
            kept = filter_pairs(src_lines, tgt_lines, src, tgt, config.max_positions, dtype)
            for lang, tokens, offsets in ((config.source_lang, kept.src_tokens, kept.src_offsets),
                                          (config.target_lang, kept.tgt_tokens, kept.tgt_offsets)):
                write_indexed(tokens, offsets, layout.token_file(tmp_dir, name, lang),
                              layout.offset_file(tmp_dir, name, lang))
            splits[name] = {"lines": len(src_lines), "examples": kept.num_examples,
                            "src_tokens": int(len(kept.src_tokens)), "tgt_tokens": int(len(kept.tgt_tokens)),
                            "dropped": kept.dropped}
    meta = {
        "format": layout.FORMAT_NAME, "version": layout.FORMAT_VERSION,
        "source_lang": config.source_lang, "target_lang": config.target_lang,
        "joint_vocab": not config.separate_vocab,
        "spm_model": spm_names,
        "vocab_size": {"src": src_tok.vocab_size, "tgt": tgt_tok.vocab_size},
        "special_ids": SPECIAL_IDS.to_dict(),
        "dtype": dtype.name, "max_positions": config.max_positions,
        "splits": splits,
        "dropped": {reason: sum(s["dropped"][reason] for s in splits.values()) for reason in layout.DROP_REASONS},
        "spm_trained": config.spm_model is None,
        "model_type": config.model_type if config.spm_model is None else None,
    }
    (tmp_dir / layout.META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
