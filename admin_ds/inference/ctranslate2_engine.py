"""Translating with a CTranslate2 model written by ``admin-ds convert --format ctranslate2``.

``admin-ds translate --engine ctranslate2 --checkpoint OUT`` comes here; the default engine stays our own
beam search (``translate.py``). Lines are SentencePiece-encoded exactly as there (truncated to the
model's positions), handed to ``ctranslate2.Translator.translate_batch`` as pieces (the vocabulary is the
sentencepiece model's pieces in id order, so CTranslate2's ids are ours), and decoded back in input order.

The decoding flags map onto CTranslate2's (docs/deploy.md has the table and where semantics differ):
  --beam -> beam_size (1 is greedy search); --lenpen -> length_penalty (both divide the sum of
  log-probabilities by len ** lenpen with EOS counted); the stopping rule is the same at the default
  patience 1 (a sentence ends once ``beam`` hypotheses have ended);
  --max-len-a/--max-len-b -> max_decoding_length per sentence: sentences are grouped by their cap
  int(a * src_len + b) (src_len with EOS), one translate_batch call per group, so that a sentence's cap
  does not depend on its neighbours, as in our beam search; --max-tokens -> max_batch_size with
  batch_type "tokens". PAD and BOS are suppressed (``suppress_sequences``), EOS is not allowed first
  (min_decoding_length 1), as in our search.
Differences: CTranslate2 applies these bans before its log-softmax (ours masks after it), and a hypothesis
that reaches the cap ends there without EOS (ours forces EOS and scores it). Outputs can therefore differ
where two hypotheses are within rounding of each other or where a sentence reaches its cap.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.ctranslate2_export import CT2_FORMAT, CT2_INFO, import_ctranslate2
from admin_ds.data import Tokenizer
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.io import read_json_object
from admin_ds.vocab import SPECIAL_IDS


class CT2Model:
    """A loaded CTranslate2 translator with the tokenizers and settings of its export."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", device_index: int = 0,
                 compute_type: str = "default", threads: int = 0, spm: Optional[str] = None,
                 tgt_spm: Optional[str] = None):
        self.path = Path(path)
        self.info = read_ct2_info(self.path)
        src_spm, tgt_spm = spm_paths(self.path, self.info, spm, tgt_spm)
        self.tokenizer = Tokenizer(src_spm)
        self.tgt_tokenizer = self.tokenizer if tgt_spm == src_spm else Tokenizer(tgt_spm)
        ctranslate2 = import_ctranslate2()
        try:
            self.translator = ctranslate2.Translator(str(self.path), device=device, device_index=device_index,
                                                     compute_type=compute_type, intra_threads=threads)
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


def spm_paths(path: Path, info: dict, spm: Optional[str], tgt_spm: Optional[str]) -> tuple[Path, Path]:
    """--spm/--tgt-spm if given, else the sentencepiece model(s) the export carries."""
    if spm:
        return Path(spm), Path(tgt_spm or spm)
    if tgt_spm:
        raise UserError("--tgt-spm needs --spm for the source side")
    entry = info.get("spm_model")
    if isinstance(entry, str):
        return path / entry, path / entry
    if isinstance(entry, dict) and "src" in entry and "tgt" in entry:
        return path / entry["src"], path / entry["tgt"]
    raise UserError(f"{path}: the export carries no sentencepiece model; pass --spm PATH")


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


def decoding_cap(src_len: int, decoding: DecodingConfig, max_positions: int, min_len: int = 1) -> int:
    """Our beam search's cap on generated tokens (EOS not counted), ``beam.max_lengths`` for one sentence."""
    return max(min_len, min(math.floor(decoding.max_len_a * src_len + decoding.max_len_b), max_positions - 1))


def hypotheses_ct2(model: CT2Model, lines: Sequence[str], decoding: DecodingConfig,
                   nbest: int = 1) -> list[list[tuple[list[int], float]]]:
    """For each line its ``nbest`` (target ids, score) pairs, best first, in input order; an empty line
    gives ``nbest`` empty hypotheses with score 0 (as ``translate.translate_hypotheses``)."""
    if not 1 <= nbest <= decoding.beam:
        raise UserError(f"nbest must be between 1 and the beam size {decoding.beam}, got {nbest}")
    results: list[list[tuple[list[int], float]]] = [[([], 0.0)] * nbest for _ in lines]
    groups: dict[int, list[tuple[int, list[str]]]] = defaultdict(list)
    for i, line in enumerate(lines):
        ids = model.tokenizer.encode(line.strip()) if line.strip() else []
        if not ids:
            continue
        ids = ids[: model.max_positions - 1]
        groups[decoding_cap(len(ids) + 1, decoding, model.max_positions)].append(
            (i, [model.src_pieces[t] for t in ids]))
    for cap, members in sorted(groups.items()):
        outputs = model.translator.translate_batch(
            [pieces for _, pieces in members], beam_size=decoding.beam, length_penalty=decoding.lenpen,
            num_hypotheses=nbest, max_decoding_length=cap, min_decoding_length=1, max_input_length=0,
            suppress_sequences=model.suppressed, return_scores=True, max_batch_size=decoding.max_tokens,
            batch_type="tokens")
        for (i, _), output in zip(members, outputs):
            results[i] = [([model.tgt_index[token] for token in tokens], float(score))
                          for tokens, score in zip(output.hypotheses, output.scores)]
    return results


def translate_ct2(model: CT2Model, lines: Sequence[str], decoding: DecodingConfig,
                  nbest: int = 1) -> list[list[tuple[str, float]]]:
    """``hypotheses_ct2`` as text: the shape ``translate.translate_with`` returns."""
    return [[(model.tgt_tokenizer.decode(ids), score) for ids, score in sentence]
            for sentence in hypotheses_ct2(model, lines, decoding, nbest)]


def load_ct2(checkpoint: str, decoding: DecodingConfig, threads: int = 0) -> CT2Model:
    """A CT2Model on the device and in the compute type that ``decoding`` asks for."""
    ctranslate2 = import_ctranslate2()
    device = decoding.device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    compute_type = "float16" if decoding.fp16 else "bfloat16" if decoding.bf16 else "default"
    return CT2Model(checkpoint, device=kind, device_index=int(index or 0), compute_type=compute_type,
                    threads=threads, spm=decoding.spm, tgt_spm=decoding.tgt_spm)
