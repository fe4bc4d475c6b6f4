"""Preparing a corpus (`admin-ds prepare`): parallel text in, a prepared dataset directory out.

Steps: check the settings, the output rules, that every input file exists and that the training split has a
pair with text on both sides (read up to the first one); train a SentencePiece model
on (a sample of at most `--spm-sentences` sentences of) the training split, joint by default, or reuse a
given one; then stream every split chunk by chunk: read both sides, check UTF-8 and that the sides stay
aligned, encode with SentencePiece's threads, drop empty and over-long pairs (counted per reason) and append
the rest to the arrays; finally write `meta.json`. Memory depends on the chunk size, not on the corpus.

Everything is written into a temporary directory next to `--out` and renamed into place at the end, so a
failed or interrupted run, or a bad input found late in the stream, leaves no half-written output; with
`--force` an old output is replaced only once the new one is complete. The layout of the result is
documented in `admin_ds.data.meta`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from admin_ds.data import binarize
from admin_ds.data import meta as layout
from admin_ds.data.binarize import IndexedWriter, encode_chunk, filter_pairs
from admin_ds.data.textio import check_exists, count_lines, line_count_error, parallel_paths, read_parallel_chunks
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
    spm_sentences: int = option(2_000_000, help="train sentencepiece on at most this many sentences, sampled "
                                                "at random from the training split (bounds its time and memory)")
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
        if self.spm_sentences < 1:
            raise UserError(f"--spm-sentences must be at least 1, got {self.spm_sentences}")
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
    for name, prefix in config.splits.items():
        for path in parallel_paths(prefix, config.source_lang, config.target_lang):
            check_exists(path, f"--{name}-prefix")
    if not _has_text_pair(config):
        raise UserError(f"the training split {config.train_prefix} has no pair with text on both sides")
    # The other content checks (UTF-8, aligned sides) happen while streaming; a failure there discards the
    # temporary directory, so a bad input still leaves nothing behind.
    with atomic_directory(out_dir, force=True) as tmp_dir:  # _check_output applied --force's rules
        meta = _build(config, tmp_dir)
    logger.info("%s", summary(meta, out_dir))
    return meta


def _has_text_pair(config: PrepareConfig) -> bool:
    """Whether some training pair has text on both sides; reads up to the first one only (normally line 1)."""
    with closing(read_parallel_chunks(config.train_prefix, config.source_lang, config.target_lang,
                                      binarize.CHUNK_LINES)) as chunks:
        return any(src and tgt for src_lines, tgt_lines, _ in chunks for src, tgt in zip(src_lines, tgt_lines))


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
    else:
        # Counting lines is fast (no decoding); it catches unequal sides before the training and the log
        # can say how many of them sentencepiece samples.
        counts = {path: count_lines(path) for path in (src_path, tgt_path)}
        if counts[src_path] != counts[tgt_path]:
            raise line_count_error(src_path, tgt_path)
        if config.separate_vocab:
            for side, path in (("src", src_path), ("tgt", tgt_path)):
                _train(config, {path: counts[path]}, tmp_dir / names[side])
        else:
            _train(config, counts, tmp_dir / names["src"])
    src_tok = Tokenizer(tmp_dir / names["src"])
    tgt_tok = src_tok if names["src"] == names["tgt"] else Tokenizer(tmp_dir / names["tgt"])
    return src_tok, tgt_tok, names


def _train(config: PrepareConfig, line_counts: dict[Path, int], model_path: Path) -> None:
    """Train on the files `line_counts` names; sentencepiece samples at most `--spm-sentences` of their lines."""
    total = sum(line_counts.values())
    logger.info("sentencepiece: training on %s of %s sentences in %s (--spm-sentences %s)",
                f"{min(total, config.spm_sentences):,}", f"{total:,}", ", ".join(map(str, line_counts)),
                f"{config.spm_sentences:,}")
    prefix = model_path.with_suffix("")
    train_sentencepiece(list(line_counts), prefix, config.vocab_size, config.model_type,
                        character_coverage=config.character_coverage, input_sentence_size=config.spm_sentences,
                        num_threads=config.workers)
    prefix.with_suffix(".vocab").unlink(missing_ok=True)  # the .model holds everything we need


def _build(config: PrepareConfig, tmp_dir: Path) -> dict:
    src_tok, tgt_tok, spm_names = _tokenizers(config, tmp_dir)
    dtype = layout.smallest_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))
    paths = [path for prefix in config.splits.values()
             for path in parallel_paths(prefix, config.source_lang, config.target_lang)]
    with _Progress(sum(path.stat().st_size for path in paths), config.progress) as progress:
        splits = {name: _encode_split(config, name, prefix, (src_tok, tgt_tok), dtype, tmp_dir, progress)
                  for name, prefix in config.splits.items()}
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
        "raw": _copy_raw_text(config, tmp_dir),
    }
    (tmp_dir / layout.META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _copy_raw_text(config: PrepareConfig, tmp_dir: Path) -> dict:
    """Copy the valid and test splits' raw text (both sides, every line, dropped pairs included) into
    DIR/SPLIT.LANG.txt, where BLEU finds its references: a copy, not the input's path, so that the prepared folder can
    move, and the references cannot change under it. Returns meta.json's "raw" (paths relative to DIR)."""
    raw = {}
    for name, prefix in config.splits.items():
        if name not in layout.RAW_SPLITS:
            continue
        files = {}
        for side, path in zip(("src", "tgt"), parallel_paths(prefix, config.source_lang, config.target_lang)):
            target = layout.raw_file(tmp_dir, name, config.target_lang if side == "tgt" else config.source_lang)
            shutil.copyfile(path, target)
            files[side] = target.name
        raw[name] = files
    return raw


def _encode_split(config: PrepareConfig, name: str, prefix: Path, tokenizers: tuple[Tokenizer, Tokenizer],
                  dtype: np.dtype, tmp_dir: Path, progress: _Progress) -> dict:
    """Stream one split into SPLIT.LANG.bin/.idx in `tmp_dir`; returns its `meta.json` entry."""
    dropped = dict.fromkeys(layout.DROP_REASONS, 0)
    lines = 0
    with IndexedWriter(layout.token_file(tmp_dir, name, config.source_lang),
                       layout.offset_file(tmp_dir, name, config.source_lang)) as src_out, \
            IndexedWriter(layout.token_file(tmp_dir, name, config.target_lang),
                          layout.offset_file(tmp_dir, name, config.target_lang)) as tgt_out:
        for src_lines, tgt_lines, nbytes in read_parallel_chunks(prefix, config.source_lang, config.target_lang,
                                                                  binarize.CHUNK_LINES):
            src = encode_chunk(tokenizers[0], src_lines, config.workers, dtype)
            tgt = encode_chunk(tokenizers[1], tgt_lines, config.workers, dtype)
            kept = filter_pairs(src_lines, tgt_lines, src, tgt, config.max_positions)
            src_out.append(kept.src)
            tgt_out.append(kept.tgt)
            for reason, count in kept.dropped.items():
                dropped[reason] += count
            lines += len(src_lines)
            progress.advance(nbytes, 2 * len(src_lines))
    return {"lines": lines, "examples": src_out.num_sentences, "src_tokens": src_out.num_tokens,
            "tgt_tokens": tgt_out.num_tokens, "dropped": dropped}


class _Progress:
    """A tqdm bar over the input bytes (known up front from the file sizes, so it has an ETA and shows MB/s)
    that also shows the lines read (both sides) and lines/s."""

    def __init__(self, total_bytes: int, enabled: bool):
        self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="encode",
                         disable=not enabled)
        self._lines = 0

    def advance(self, nbytes: int, nlines: int) -> None:
        if self._bar.disable:
            return
        self._lines += nlines
        self._bar.update(nbytes)
        elapsed = self._bar.format_dict["elapsed"]
        if elapsed > 0:
            self._bar.set_postfix_str(f"{self._lines:,} lines, {self._lines / elapsed:,.0f} lines/s", refresh=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
