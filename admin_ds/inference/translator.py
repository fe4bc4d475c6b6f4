"""One entry point for translating text from Python, with either engine.

    import admin_ds
    translator = admin_ds.Translator("runs/de-en", beam=5)          # or engine="ctranslate2" on a converted model
    translator.translate(["Guten Morgen!", "Wie geht es dir?"])      # -> ["Good morning!", "How are you?"]

``engine="admin-ds"`` (default) runs our beam search on anything ``admin_ds.load_model`` reads;
``engine="ctranslate2"`` runs CTranslate2 on a directory written by ``admin-ds convert --format ctranslate2``.
Both find the sentencepiece model(s) by the same rule (``translate.load_tokenizers``) and encode lines the
same way (``translate.encode_sources``). ``admin-ds translate``, ``admin-ds evaluate`` and ``admin-ds demo``
translate through this class.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional

import torch

from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig

ENGINES = ("admin-ds", "ctranslate2")  # ctranslate2 is imported only when that engine is chosen

Hypotheses = list[list[tuple[str, float]]]  # [lines][nbest] of (text, score), best first


class Translator:
    """A loaded model and its tokenizers; translates lists of lines, or a stream of them in chunks.

    ``settings`` are the fields of ``DecodingConfig`` (beam, lenpen, max_len_a, max_len_b, max_tokens, spm,
    tgt_spm, device, fp16, bf16, threads, workers, caps), with its defaults. ``data``: a prepared dataset whose
    sentencepiece model(s) to use (our engine; the CTranslate2 export carries its own).
    """

    def __init__(self, path: str | os.PathLike, engine: str = "admin-ds", *, data: Optional[str] = None,
                 decoding: Optional[DecodingConfig] = None, **settings):
        if engine not in ENGINES:
            raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.engine = engine
        self.decoding = _decoding_config(decoding, settings)
        self.path = str(path)
        if engine == "ctranslate2":
            from admin_ds.inference.ctranslate2_engine import load_ct2

            self._ct2 = load_ct2(self.path, self.decoding, data)
        else:
            from admin_ds.inference.translate import load_translator

            if self.decoding.threads:
                torch.set_num_threads(self.decoding.threads)  # torch's setting is per process
            self._model, self._tokenizer, self._tgt_tokenizer = load_translator(self.path, self.decoding, data)

    def translate(self, lines: Sequence[str]) -> list[str]:
        """The best translation of every line, in input order; an empty line gives an empty translation."""
        return [sentence[0][0] for sentence in self.translate_nbest(lines, nbest=1)]

    def translate_nbest(self, lines: Sequence[str], nbest: int = 1, progress: Optional[bool] = False) -> Hypotheses:
        """For every line its ``nbest`` (text, score) pairs, best first; the score is the sum of the
        log-probabilities (EOS counted) / length ** lenpen. ``progress``: a bar on stderr (our engine;
        None: only on a terminal)."""
        if not 1 <= nbest <= self.decoding.beam:
            raise UserError(f"--nbest must be between 1 and the beam size {self.decoding.beam}, got {nbest}")
        lines = list(lines)
        if self.engine == "ctranslate2":
            from admin_ds.inference.ctranslate2_engine import translate_ct2

            return translate_ct2(self._ct2, lines, self.decoding, nbest=nbest)
        from admin_ds.inference.translate import translate_with

        return translate_with(self._model, self._tokenizer, self._tgt_tokenizer, lines, self.decoding,
                              nbest=nbest, progress=progress)

    def translate_stream(self, chunks: Iterable[Sequence[str]], nbest: int = 1) -> Iterator[Hypotheses]:
        """``translate_nbest`` of every chunk, each handed on as soon as it is done: memory holds one chunk
        whatever the stream's length (``admin_ds.io.read_line_chunks`` makes such chunks of a file)."""
        for chunk in chunks:
            yield self.translate_nbest(chunk, nbest=nbest)

    def __repr__(self) -> str:
        return f"Translator({self.path!r}, engine={self.engine!r}, beam={self.decoding.beam})"


def _decoding_config(decoding: Optional[DecodingConfig], settings: dict) -> DecodingConfig:
    known = {field.name for field in dataclasses.fields(DecodingConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"unknown decoding setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    base = decoding or DecodingConfig()
    return dataclasses.replace(base, **settings).validate()
