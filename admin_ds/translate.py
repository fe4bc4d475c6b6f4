"""``admin-ds translate``: beam search over a text file, one sentence a line, output in input order.

Sentences are SentencePiece-encoded, given an EOS (the source convention of training), sorted by length and
cut into batches of at most ``--max-tokens`` padded source tokens, then restored to input order. Empty input
lines give empty output lines without touching the model. With ``--nbest N`` every input line gives N
consecutive output lines, best first.

SentencePiece model lookup, first match wins:
  1. ``--spm PATH`` (and ``--tgt-spm PATH`` for a separate target vocabulary);
  2. ``--data DIR``: the model(s) named in the prepared dataset's meta.json;
  3. beside the checkpoint: its config.json key ``"spm_model"`` (a path, or {"src": path, "tgt": path},
     relative to the checkpoint directory), else a file ``spm.model``, else the prepared dataset named by
     ``"data"`` in a training run's train_config.json; the same in the parent directory (so
     ``SAVE_DIR/global_stepN`` finds what ``SAVE_DIR`` holds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from admin_ds.data import Tokenizer, load_meta
from admin_ds.errors import UserError
from admin_ds.generate import generate, make_batch

logger = logging.getLogger(__name__)

PROGRESS_MIN_LINES = 200  # below this a progress bar is noise


# --- tokenizer --------------------------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer with ``encode(str) -> list[int]`` (no BOS/EOS) and ``decode(list[int]) -> str``."""
    return Tokenizer(path)


def find_spm(checkpoint: str | os.PathLike, spm: Optional[str] = None, tgt_spm: Optional[str] = None,
             data: Optional[str] = None) -> tuple[Path, Path]:
    """(source, target) SentencePiece model paths by the lookup order in the module docstring."""
    if spm:
        return Path(spm), Path(tgt_spm or spm)
    if tgt_spm:
        raise UserError("--tgt-spm needs --spm for the source side")
    if data:
        info = load_meta(data)
        return info.src_spm_path, info.tgt_spm_path
    start = Path(checkpoint)
    for directory in (start, start.parent):
        found = _spm_beside(directory)
        if found is not None:
            return found
    raise UserError(f"no sentencepiece model found for {checkpoint}: pass --spm PATH (or --data DIR), or put "
                    "spm.model beside the checkpoint")


def _spm_beside(directory: Path) -> Optional[tuple[Path, Path]]:
    """config.json's "spm_model", a file spm.model, or the dataset train_config.json's "data" names."""
    config = _read_json(directory / "config.json")
    entry = config.get("spm_model")
    if isinstance(entry, str):
        return directory / entry, directory / entry
    if isinstance(entry, dict) and "src" in entry and "tgt" in entry:
        return directory / entry["src"], directory / entry["tgt"]
    if (directory / "spm.model").is_file():
        return directory / "spm.model", directory / "spm.model"
    data = _read_json(directory / "train_config.json").get("data")
    if isinstance(data, str) and (Path(data) / "meta.json").is_file():
        info = load_meta(data)
        return info.src_spm_path, info.tgt_spm_path
    return None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --- batching and translation ----------------------------------------------------------------------
def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_tokens`` padded tokens, longest sentences first.

    A sentence longer than ``max_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]  # the first is the longest
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def translate_hypotheses(model, tokenizer, lines: Sequence[str], beam: int = 5, lenpen: float = 1.0,
                         max_len_a: float = 1.2, max_len_b: int = 10, nbest: int = 1, max_tokens: int = 4096,
                         tgt_tokenizer=None, progress: Optional[bool] = False,
                         incremental: bool = True) -> list[list[tuple[str, float]]]:
    """Translate ``lines``; for each, its ``nbest`` (text, score) pairs, best first, in input order.

    ``progress``: True shows a tqdm bar, None shows it only on a terminal, False never.
    An empty (or all-whitespace) line gives ``nbest`` empty translations with score 0.
    """
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be positive, got {max_tokens}")
    tgt_tokenizer = tgt_tokenizer or tokenizer
    cfg = model.cfg
    for side, tok, size in (("source", tokenizer, cfg.src_vocab_size), ("target", tgt_tokenizer, cfg.tgt_vocab_size)):
        if tok.vocab_size > size:
            raise UserError(f"the {side} sentencepiece model has {tok.vocab_size} pieces but the checkpoint's "
                            f"{side} vocabulary has {size}: they do not belong together")
    device = next(model.parameters()).device
    results: list[list[tuple[str, float]]] = [[("", 0.0)] * nbest for _ in lines]

    sources: dict[int, list[int]] = {}
    truncated = 0
    for i, line in enumerate(lines):
        ids = tokenizer.encode(line.strip()) if line.strip() else []
        if not ids:
            continue
        if len(ids) >= cfg.max_positions:
            ids = ids[: cfg.max_positions - 1]
            truncated += 1
        sources[i] = ids + [cfg.eos_id]
    if truncated:
        logger.warning("%d input line(s) exceed the model's %d positions and were truncated",
                       truncated, cfg.max_positions)

    indices = list(sources)
    batches = token_batches([len(sources[i]) for i in indices], max_tokens)
    with tqdm(total=len(indices), disable=None if progress is None else not progress, unit="sent",
              file=sys.stderr, leave=False) as bar:
        for batch in batches:
            batch_ids = [indices[j] for j in batch]
            src = make_batch([sources[i] for i in batch_ids], cfg.pad_id, device)  # [B, S]
            hyps = generate(model, src, beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b,
                            nbest=nbest, incremental=incremental, vocab_limit=tgt_tokenizer.vocab_size)
            for i, sentence_hyps in zip(batch_ids, hyps):
                results[i] = [(tgt_tokenizer.decode(h.tokens), h.score) for h in sentence_hyps]
            bar.update(len(batch_ids))
    return results


def translate_lines(model, tokenizer, lines: Sequence[str], beam: int = 5, lenpen: float = 1.0,
                    max_len_a: float = 1.2, max_len_b: int = 10, max_tokens: int = 4096, tgt_tokenizer=None,
                    progress: Optional[bool] = False) -> list[str]:
    """The best translation of every line, in input order (empty lines stay empty)."""
    hyps = translate_hypotheses(model, tokenizer, lines, beam=beam, lenpen=lenpen, max_len_a=max_len_a,
                                max_len_b=max_len_b, nbest=1, max_tokens=max_tokens,
                                tgt_tokenizer=tgt_tokenizer, progress=progress)
    return [h[0][0] for h in hyps]


# --- files, devices, models ------------------------------------------------------------------------
def decode_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 bytes -> lines without their line ends; invalid UTF-8 is a UserError naming the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{name}: invalid UTF-8 on line {line} (byte {err.start}: {err.reason})") from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a final newline ends the last line; it does not start another
    return [line.rstrip("\r") for line in lines]


def read_text_lines(path: str, flag: str) -> list[str]:
    """Lines of a UTF-8 file, or of stdin for "-"."""
    if path == "-":
        return decode_lines(sys.stdin.buffer.read(), "<stdin>")
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise UserError(f"{flag} {path} {what}")
    return decode_lines(file.read_bytes(), path)


def check_output_path(path: str, flag: str) -> None:
    """Fail before the work, not after it, when the output cannot be written."""
    if path == "-":
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: directory {parent} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a directory")


def write_text_atomic(path: str, text: str) -> None:
    """Write to stdout for "-", else to a temporary file in the same directory renamed into place."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pick_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return device


def load_for_inference(checkpoint: str, device: torch.device, fp16: bool = False, bf16: bool = False):
    """``admin_ds.load_model`` on ``device`` in eval mode, optionally cast to fp16/bf16."""
    import admin_ds

    if fp16 and bf16:
        raise UserError("choose one of --fp16 and --bf16")
    model = admin_ds.load_model(checkpoint)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def load_translator(args: argparse.Namespace):
    """(model, source tokenizer, target tokenizer) for the decoding flags of translate and evaluate."""
    device = pick_device(args.device)
    model = load_for_inference(args.checkpoint, device, args.fp16, args.bf16)
    src_spm, tgt_spm = find_spm(args.checkpoint, args.spm, args.tgt_spm, args.data)
    tokenizer = load_tokenizer(src_spm)
    tgt_tokenizer = tokenizer if tgt_spm == src_spm else load_tokenizer(tgt_spm)
    return model, tokenizer, tgt_tokenizer


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by translate and evaluate."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--beam", type=int, default=5, help="beam size; 1 is greedy search (default 5)")
    group.add_argument("--lenpen", type=float, default=1.0,
                       help="length penalty: score = sum log p / len^lenpen (default 1.0)")
    group.add_argument("--max-len-a", type=float, default=1.2,
                       help="generate at most a * src_len + b tokens (default a=1.2)")
    group.add_argument("--max-len-b", type=int, default=10, help="see --max-len-a (default b=10)")
    group.add_argument("--max-tokens", type=int, default=4096,
                       help="padded source tokens per batch (default 4096)")
    group.add_argument("--spm", help="sentencepiece model (default: found beside the checkpoint)")
    group.add_argument("--tgt-spm", help="target sentencepiece model when the vocabularies are separate")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="decode in float16 (GPU)")
    precision.add_argument("--bf16", action="store_true", help="decode in bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="anything admin_ds.load_model accepts (export or DeepSpeed directory)")
    parser.add_argument("--input", default="-", help="text to translate, one sentence a line (default stdin)")
    parser.add_argument("--output", default="-", help="where to write translations (default stdout)")
    parser.add_argument("--nbest", type=int, default=1, help="write this many hypotheses per line, best first")
    parser.add_argument("--data", help="prepared data directory whose sentencepiece model(s) to use")
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> int:
    lines = read_text_lines(args.input, "--input")
    check_output_path(args.output, "--output")
    model, tokenizer, tgt_tokenizer = load_translator(args)
    start = time.perf_counter()
    hyps = translate_hypotheses(model, tokenizer, lines, beam=args.beam, lenpen=args.lenpen,
                                max_len_a=args.max_len_a, max_len_b=args.max_len_b, nbest=args.nbest,
                                max_tokens=args.max_tokens, tgt_tokenizer=tgt_tokenizer,
                                progress=None if len(lines) >= PROGRESS_MIN_LINES else False)
    elapsed = time.perf_counter() - start
    write_text_atomic(args.output, "".join(text + "\n" for sentence in hyps for text, _ in sentence))
    logger.info("translated %d lines in %.1f s (%.1f sentences/s)", len(lines), elapsed,
                len(lines) / max(elapsed, 1e-9))
    return 0
