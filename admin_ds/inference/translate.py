"""Translating text with beam search: sentences in, translations out, in input order.

Sentences are SentencePiece-encoded, given an EOS (the source convention of training), sorted by length and
cut into batches of at most ``max_tokens`` padded source tokens (``admin_ds.data.token_batches``), then
restored to input order. Empty input lines give empty translations without touching the model.

Both engines (this one and ``ctranslate2_engine``) find their tokenizers with ``load_tokenizers`` (the rule
of ``admin_ds.checkpoints.rundir.find_spm``) and encode their sources with ``encode_sources``: one rule for
which sentencepiece model a checkpoint uses and how a line becomes ids. ``translator.Translator`` is the
entry point that picks the engine.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Optional

import torch
from tqdm import tqdm

from admin_ds.checkpoints.load import load_model
from admin_ds.checkpoints.rundir import find_spm
from admin_ds.data import Tokenizer, token_batches
from admin_ds.errors import UserError
from admin_ds.inference.beam import generate, make_batch
from admin_ds.inference.config import DecodingConfig

logger = logging.getLogger(__name__)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer with ``encode(str) -> list[int]`` (no BOS/EOS) and ``decode(list[int]) -> str``."""
    return Tokenizer(path)


def load_tokenizers(checkpoint: str | os.PathLike, spm: Optional[str] = None, tgt_spm: Optional[str] = None,
                    data: Optional[str] = None) -> tuple[Tokenizer, Tokenizer]:
    """(source, target) tokenizers of a checkpoint as ``find_spm`` finds them; one object when they are one."""
    src_spm, tgt_spm_path = find_spm(checkpoint, spm, tgt_spm, data)
    tokenizer = load_tokenizer(src_spm)
    return tokenizer, tokenizer if tgt_spm_path == src_spm else load_tokenizer(tgt_spm_path)


def encode_sources(tokenizer, lines: Sequence[str], max_positions: int) -> dict[int, list[int]]:
    """{line index: source ids without EOS} of the non-empty lines; ids are cut to ``max_positions - 1`` so
    that the EOS both engines append still fits the model's positions (a warning counts the cut lines)."""
    sources: dict[int, list[int]] = {}
    truncated = 0
    for i, line in enumerate(lines):
        ids = tokenizer.encode(line.strip()) if line.strip() else []
        if not ids:
            continue
        if len(ids) >= max_positions:
            ids = ids[: max_positions - 1]
            truncated += 1
        sources[i] = ids
    if truncated:
        logger.warning("%d input line(s) exceed the model's %d positions and were truncated",
                       truncated, max_positions)
    return sources


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

    sources = {i: ids + [cfg.eos_id] for i, ids in encode_sources(tokenizer, lines, cfg.max_positions).items()}

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


def translate_with(model, tokenizer, tgt_tokenizer, lines: Sequence[str], decoding: DecodingConfig,
                   nbest: int = 1, progress: Optional[bool] = False) -> list[list[tuple[str, float]]]:
    """``translate_hypotheses`` with the settings of a DecodingConfig."""
    return translate_hypotheses(model, tokenizer, lines, beam=decoding.beam, lenpen=decoding.lenpen,
                                max_len_a=decoding.max_len_a, max_len_b=decoding.max_len_b, nbest=nbest,
                                max_tokens=decoding.max_tokens, tgt_tokenizer=tgt_tokenizer, progress=progress)


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
    """``load_model`` on ``device`` in eval mode, optionally cast to fp16/bf16."""
    if fp16 and bf16:
        raise UserError("choose one of --fp16 and --bf16")
    model = load_model(checkpoint)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def load_translator(checkpoint: str, decoding: DecodingConfig, data: Optional[str] = None):
    """(model, source tokenizer, target tokenizer) for a checkpoint and the decoding settings."""
    device = pick_device(decoding.device)
    model = load_for_inference(checkpoint, device, decoding.fp16, decoding.bf16)
    return (model, *load_tokenizers(checkpoint, decoding.spm, decoding.tgt_spm, data))
