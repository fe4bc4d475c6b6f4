"""SentencePiece training and a thin tokenizer wrapper with the package's fixed special ids.

Every model this package trains or accepts uses the special ids of ``admin_ds.vocab`` (pad 0, unk 1, bos 2,
eos 3), so that models, datasets and decoders never have to ask a tokenizer which id means padding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from admin_ds.errors import UserError
from admin_ds.io import write_bytes_atomic
from admin_ds.vocab import SPECIAL_IDS

# Re-exported names for the ids that admin_ds.vocab owns.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = SPECIAL_IDS.pad, SPECIAL_IDS.unk, SPECIAL_IDS.bos, SPECIAL_IDS.eos

MODEL_TYPES = ("bpe", "unigram")

# SentencePiece reports problems as "INTERNAL: src/file.cc(123) [check] message"; users need the message.
_SPM_ERROR_PREFIX = re.compile(r"^.*?\]\s*")


def _spm_message(error: Exception) -> str:
    return _SPM_ERROR_PREFIX.sub("", str(error).strip().splitlines()[0])


def train_sentencepiece(
    files: Sequence[str | os.PathLike],
    model_prefix: str | os.PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    *,
    character_coverage: float = 1.0,
    input_sentence_size: int = 2_000_000,
    num_threads: int = 1,
) -> Path:
    """Train a SentencePiece model on text files (one sentence a line) and return the `.model` path.

    Args:
        files: UTF-8 text files; a joint vocabulary is simply training on both languages' files.
        model_prefix: where to write `PREFIX.model` and `PREFIX.vocab`.
        vocab_size: the target size. It is a soft limit: on a corpus too small to yield that many pieces
            the model comes out smaller (check `Tokenizer.vocab_size`) instead of failing.
        model_type: "bpe" or "unigram".
        character_coverage: share of characters covered by the vocabulary; 1.0 keeps every character
            (right for European languages), lower values map rare characters to UNK.
        input_sentence_size: at most this many sentences, sampled at random, are used for training, which
            bounds time and memory on large corpora.
        num_threads: training threads.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown sentencepiece model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if vocab_size <= 4:
        raise UserError(f"vocabulary size must be larger than the 4 special pieces, got {vocab_size}")
    try:
        spm.SentencePieceTrainer.train(
            input=[str(f) for f in files],
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=SPECIAL_IDS.pad,
            unk_id=SPECIAL_IDS.unk,
            bos_id=SPECIAL_IDS.bos,
            eos_id=SPECIAL_IDS.eos,
            # Small corpora (tests, the demo) cannot fill a large vocabulary; shrink instead of failing.
            hard_vocab_limit=False,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=max(1, num_threads),
            minloglevel=2,  # silence SentencePiece's per-step log on stderr
        )
    except RuntimeError as error:
        raise UserError(f"sentencepiece training failed: {_spm_message(error)}") from None
    model = Path(f"{model_prefix}.model")
    keep_only_file_names(model)
    return model


def keep_only_file_names(model: Path) -> None:
    """Cut the folders from the training inputs and model prefix that sentencepiece records in the model.

    It stores its training options as given, so every model (and every export and upload that carries it)
    would hold the preparing machine's absolute paths, and the same data prepared in two folders would give
    two different files. Only the trainer's record changes: pieces, scores and normalisation stay byte for byte.
    """
    from sentencepiece import sentencepiece_model_pb2  # the model's protobuf schema, shipped with sentencepiece

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    spec = proto.trainer_spec
    names = [Path(path).name for path in spec.input]
    del spec.input[:]
    spec.input.extend(names)
    spec.model_prefix = Path(spec.model_prefix).name
    write_bytes_atomic(model, proto.SerializeToString())


class Tokenizer:
    """A loaded SentencePiece model whose special ids are checked to be the package's fixed ones.

    Args:
        model_path: a `.model` file written by SentencePiece.
    """

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"sentencepiece model not found: {self.model_path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_path))
        except (RuntimeError, OSError) as error:
            raise UserError(f"cannot load sentencepiece model {self.model_path}: {_spm_message(error)}") from None
        found = {"pad": self._sp.pad_id(), "unk": self._sp.unk_id(), "bos": self._sp.bos_id(), "eos": self._sp.eos_id()}
        wanted = SPECIAL_IDS.to_dict()
        if found != wanted:
            raise UserError(
                f"sentencepiece model {self.model_path} has special ids {found}, but admin-ds needs {wanted}; "
                "train it with " + " ".join(f"{k}_id={v}" for k, v in wanted.items())
                + " (or let `admin-ds prepare` train one)"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        """Token ids of one sentence, without BOS/EOS."""
        return self._sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of many sentences, in order; SentencePiece spreads them over `num_threads` threads."""
        return self._sp.encode(list(texts), out_type=int, num_threads=max(1, num_threads))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids; PAD/BOS/EOS decode to nothing."""
        return self._sp.DecodeIds([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(int(token_id))

    def pieces(self) -> list[str]:
        """Every piece in id order (a vocabulary list, e.g. for CTranslate2)."""
        return [self._sp.IdToPiece(i) for i in range(self.vocab_size)]
