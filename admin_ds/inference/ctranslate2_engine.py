"""Translating with a CTranslate2 model written by ``admin-ds convert --format ctranslate2``.

``admin_ds.Translator(OUT, engine="ctranslate2")`` and ``admin-ds translate --engine ctranslate2`` come
here; the default engine stays our own beam search (``translate.py``). The tokenizers are found and the
lines encoded as there (``translate.load_tokenizers``, ``translate.encode_sources``), handed to CTranslate2
as pieces (the vocabulary is the sentencepiece model's pieces in id order, so CTranslate2's ids are ours),
and decoded back in input order.

The decoding flags map onto CTranslate2's (docs/deploy.md has the table and where semantics differ):
  --beam -> beam_size (1 is greedy search); --lenpen -> length_penalty (both divide the sum of
  log-probabilities by len ** lenpen with EOS counted); the stopping rule is the same at the default
  patience 1 (a sentence ends once ``beam`` hypotheses have ended);
  --max-len-a/--max-len-b -> max_decoding_length (--caps: see ``hypotheses_ct2``); --max-tokens -> the budget of
  a batch. PAD and BOS are suppressed (``suppress_sequences``), EOS is not allowed first
  (min_decoding_length 1), as in our search.
Batching follows CTranslate2's own fast path: sentences sorted by length, cut into batches of at most
--max-tokens padded tokens, every batch submitted at once (``asynchronous``) so that ``inter_threads``
workers decode batches in parallel while each uses ``intra_threads`` for its matrix products (--workers and
--threads; by default one worker per CPU core with one thread each: ``workers_and_threads``).
Differences: CTranslate2 applies these bans before its log-softmax (ours masks after it), and a hypothesis
that reaches the cap ends there without EOS (ours forces EOS and scores it). Outputs can therefore differ
where two hypotheses are within rounding of each other or where a sentence reaches its cap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.ctranslate2_export import CT2_FORMAT, CT2_INFO, import_ctranslate2
from admin_ds.data import token_batches
from admin_ds.errors import UserError
from admin_ds.inference.beam import length_cap
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translate import encode_sources, load_tokenizers
from admin_ds.io import read_json_object
from admin_ds.vocab import SPECIAL_IDS


class CT2Model:
    """A loaded CTranslate2 translator with the tokenizers and settings of its export."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", device_index: int = 0,
                 compute_type: str = "default", threads: int = 0, spm: Optional[str] = None,
                 tgt_spm: Optional[str] = None, inter_threads: int = 1, data: Optional[str] = None):
        """``threads``: CTranslate2's intra_threads (0: its default); ``inter_threads``: batches decoded in
        parallel (each worker holds its own copy of the model's activations, not of its weights). The
        tokenizers: ``spm``/``tgt_spm``, else ``data``'s, else the ones the export carries."""
        self.path = Path(path)
        self.info = read_ct2_info(self.path)
        self.tokenizer, self.tgt_tokenizer = load_tokenizers(self.path, spm, tgt_spm, data)
        ctranslate2 = import_ctranslate2()
        try:
            self.translator = ctranslate2.Translator(str(self.path), device=device, device_index=device_index,
                                                     compute_type=compute_type, intra_threads=threads,
                                                     inter_threads=inter_threads)
        except (RuntimeError, ValueError) as err:
            raise UserError(f"CTranslate2 cannot load {self.path}: {str(err).splitlines()[0]}") from None
        self.src_pieces = self.tokenizer.pieces()
        tgt_pieces = self.tgt_tokenizer.pieces()
        self.tgt_index = {piece: i for i, piece in enumerate(tgt_pieces)}
        self.max_positions = int(self.info["max_positions"])
        vocab = _target_vocabulary(self.path)
        if vocab[:len(tgt_pieces)] != tgt_pieces:
            raise UserError(f"{self.path}: the target sentencepiece model does not match the model's vocabulary")
        # PAD and BOS are never generated, nor ids the tokenizer cannot decode (docstring).
        self.suppressed = ([[vocab[SPECIAL_IDS.pad]], [vocab[SPECIAL_IDS.bos]]]
                           + [[piece] for piece in vocab[len(tgt_pieces):]])


def read_ct2_info(path: Path) -> dict:
    info = read_json_object(path / CT2_INFO, "CTranslate2 export info",
                            missing=f"{path}: no {CT2_INFO}; not a model written by "
                                    "`admin-ds convert --format ctranslate2`")
    if info.get("format") != CT2_FORMAT:
        raise UserError(f"{path / CT2_INFO}: format is {info.get('format')!r}, not {CT2_FORMAT!r}")
    return info


def _target_vocabulary(path: Path) -> list[str]:
    """The target tokens CTranslate2 saved (``target_`` or ``shared_vocabulary.json``), in id order."""
    for name in ("target_vocabulary.json", "shared_vocabulary.json"):
        if (path / name).is_file():
            try:
                tokens = json.loads((path / name).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise UserError(f"{path / name} is not valid JSON: {err}") from None
            if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                return tokens
            raise UserError(f"{path / name} must hold a list of tokens")
    raise UserError(f"{path}: no target_vocabulary.json or shared_vocabulary.json")


def decoding_cap(src_len: int, decoding: DecodingConfig, max_positions: int) -> int:
    """The cap on generated tokens (EOS not counted) of a source of ``src_len`` tokens with EOS: our beam
    search's rule (``beam.length_cap``) under ``decoding``'s --max-len-a/b and the model's positions."""
    return length_cap(src_len, decoding.max_len_a, decoding.max_len_b, limit=max_positions - 1)


def hypotheses_ct2(model: CT2Model, lines: Sequence[str], decoding: DecodingConfig,
                   nbest: int = 1) -> list[list[tuple[list[int], float]]]:
    """For each line its ``nbest`` (target ids, score) pairs, best first, in input order; an empty line
    gives ``nbest`` empty hypotheses with score 0 (as ``translate.translate_hypotheses``).

    ``decoding.caps`` (one of ``config.CAP_RULES``, checked by ``DecodingConfig.validate``) says whose length
    cap int(a * src_len + b) (src_len with EOS) a sentence decodes under: "sentence": its own, as in our beam
    search (a length-sorted batch is split where the cap changes, so batches hold sentences of one source
    length); "batch": its batch's longest sentence's, so batches are cut by tokens alone; a sentence may then
    run a few tokens past its own cap (docs/deploy.md).
    """
    if not 1 <= nbest <= decoding.beam:
        raise UserError(f"nbest must be between 1 and the beam size {decoding.beam}, got {nbest}")
    results: list[list[tuple[list[int], float]]] = [[([], 0.0)] * nbest for _ in lines]
    sources = encode_sources(model.tokenizer, lines, model.max_positions)
    indices = list(sources)
    pending = []
    for batch in _batches([len(sources[i]) + 1 for i in indices], decoding, model.max_positions):
        members = [indices[j] for j in batch]
        cap = max(decoding_cap(len(sources[i]) + 1, decoding, model.max_positions) for i in members)
        pending.append((members, model.translator.translate_batch(
            [[model.src_pieces[t] for t in sources[i]] for i in members], beam_size=decoding.beam,
            length_penalty=decoding.lenpen, num_hypotheses=nbest, max_decoding_length=cap, min_decoding_length=1,
            max_input_length=0, suppress_sequences=model.suppressed, return_scores=True, asynchronous=True)))
    for members, outputs in pending:
        for i, output in zip(members, outputs):
            output = output.result()
            results[i] = [([model.tgt_index[token] for token in tokens], float(score))
                          for tokens, score in zip(output.hypotheses, output.scores)]
    return results


def _batches(lengths: list[int], decoding: DecodingConfig, max_positions: int) -> list[list[int]]:
    """Positions in ``lengths`` (source lengths with EOS) cut into token batches, longest first; with caps
    "sentence" also wherever the cap changes."""
    batches = token_batches(lengths, decoding.max_tokens)
    if decoding.caps == "batch":
        return batches
    split = []
    for batch in batches:
        start = 0
        for k in range(1, len(batch) + 1):
            if k == len(batch) or (decoding_cap(lengths[batch[k]], decoding, max_positions)
                                   != decoding_cap(lengths[batch[start]], decoding, max_positions)):
                split.append(batch[start:k])
                start = k
    return split


def translate_ct2(model: CT2Model, lines: Sequence[str], decoding: DecodingConfig,
                  nbest: int = 1) -> list[list[tuple[str, float]]]:
    """``hypotheses_ct2`` as text: the shape ``translate.translate_with`` returns."""
    return [[(model.tgt_tokenizer.decode(ids), score) for ids, score in sentence]
            for sentence in hypotheses_ct2(model, lines, decoding, nbest)]


def load_ct2(checkpoint: str, decoding: DecodingConfig, data: Optional[str] = None) -> CT2Model:
    """A CT2Model on the device and in the compute type that ``decoding`` asks for; ``data``: a prepared
    dataset whose sentencepiece model(s) to use instead of the ones the export carries."""
    ctranslate2 = import_ctranslate2()
    device = decoding.device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    compute_type = "float16" if decoding.fp16 else "bfloat16" if decoding.bf16 else "default"
    workers, threads = workers_and_threads(decoding.workers, decoding.threads, kind, usable_cores())
    return CT2Model(checkpoint, device=kind, device_index=int(index or 0), compute_type=compute_type,
                    threads=threads, inter_threads=workers, spm=decoding.spm, tgt_spm=decoding.tgt_spm, data=data)


def workers_and_threads(workers: int, threads: int, device: str, cores: int) -> tuple[int, int]:
    """(inter_threads, intra_threads) for --workers and --threads. --workers 0 (the default) on the CPU:
    as many workers as fit ``cores`` at --threads each (1 thread unless set), following CTranslate2's advice
    that inter_threads x intra_threads stay within the cores, one thread per worker being its throughput
    setting; on a GPU one worker. A --workers given keeps --threads as it is (0: CTranslate2's default)."""
    if workers:
        return workers, threads
    if device != "cpu":
        return 1, threads
    threads = threads or 1
    return max(1, cores // threads), threads


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
