"""Encoding sentences to token ids in parallel, dropping unusable pairs, and the .bin/.idx array files.

A side of a split is stored as two flat arrays (see `admin_ds.data.meta` for the layout):
    tokens  [total_tokens]  every kept sentence's ids, concatenated
    offsets [n + 1]         int64; sentence i is tokens[offsets[i]:offsets[i + 1]]

`prepare` works on chunks of `CHUNK_LINES` pairs: encode both sides (`encode_chunk`), keep the usable pairs
(`filter_pairs`) and append them to the files (`IndexedWriter`), so memory depends on the chunk, not on the
corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from admin_ds.data.tokenizer import Tokenizer
from admin_ds.errors import UserError

# Pairs per chunk: big enough that SentencePiece's thread pool stays busy and the per-chunk Python overhead
# is small, small enough that one chunk's Python lists (about 40 bytes per id) stay at a few tens of MiB.
CHUNK_LINES = 20_000


@dataclass
class EncodedSide:
    """One language of a chunk, encoded: flat ids plus per-sentence lengths."""

    tokens: np.ndarray  # [total_tokens], the dataset's id dtype
    lengths: np.ndarray  # [n], int64


@dataclass
class FilteredChunk:
    """The kept pairs of a chunk, and how many pairs were dropped and why."""

    src: EncodedSide  # [kept] sentences
    tgt: EncodedSide
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return len(self.src.lengths)


def encode_chunk(tokenizer: Tokenizer, lines: Sequence[str], num_threads: int, dtype: np.dtype) -> EncodedSide:
    """Encode sentences in order with `num_threads` SentencePiece threads; ids come back as `dtype`.

    Threads inside SentencePiece instead of a process pool: the C++ encoder releases the GIL and is ~95% of
    the CPU time (the conversion to numpy the rest), so threads scale like processes with no pickling of
    lines and ids (a pool measured 10-15% more CPU time), no model reload per worker and no fork of a process
    that may hold torch's thread pools. See bench/README.md (bench_prepare_scale.py).
    """
    ids = tokenizer.encode_batch(lines, num_threads=num_threads)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return EncodedSide(tokens, lengths)


def filter_pairs(src_lines: Sequence[str], tgt_lines: Sequence[str], src: EncodedSide, tgt: EncodedSide,
                 max_positions: int) -> FilteredChunk:
    """Keep the pairs a model can use; count the others per reason.

    A pair is dropped as "empty" when either side is empty (as text or as ids) and as "too_long" when
    either side needs more than `max_positions` positions; the model adds one token (EOS to the source,
    BOS to the target input), so a side of L ids needs L + 1 positions.
    """
    src_text = np.fromiter(map(bool, src_lines), dtype=bool, count=len(src_lines))
    tgt_text = np.fromiter(map(bool, tgt_lines), dtype=bool, count=len(tgt_lines))
    empty = ~src_text | ~tgt_text | (src.lengths == 0) | (tgt.lengths == 0)
    too_long = ~empty & ((src.lengths + 1 > max_positions) | (tgt.lengths + 1 > max_positions))
    keep = ~(empty | too_long)

    def kept(side: EncodedSide) -> EncodedSide:
        # Expand the per-sentence keep mask to a per-token mask to select tokens without a Python loop.
        return EncodedSide(side.tokens[np.repeat(keep, side.lengths)], side.lengths[keep])

    return FilteredChunk(kept(src), kept(tgt), dropped={"empty": int(empty.sum()), "too_long": int(too_long.sum())})


class IndexedWriter:
    """Appends sentences to one side's .bin (ids in their dtype) and .idx (int64 offsets, starting at 0).

    Use as a context manager; `num_sentences` and `num_tokens` count what was appended.
    """

    def __init__(self, token_path: Path, offset_path: Path):
        self._tokens, self._offsets = open(token_path, "wb"), open(offset_path, "wb")
        self.num_sentences, self.num_tokens = 0, 0
        np.zeros(1, dtype=np.int64).tofile(self._offsets)

    def append(self, side: EncodedSide) -> None:
        """Write the sentences of `side` after those already written."""
        side.tokens.tofile(self._tokens)
        (self.num_tokens + np.cumsum(side.lengths, dtype=np.int64)).tofile(self._offsets)
        self.num_sentences += len(side.lengths)
        self.num_tokens += int(side.lengths.sum())

    def close(self) -> None:
        self._tokens.close()
        self._offsets.close()

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_indexed(token_path: Path, offset_path: Path, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one side; returns (tokens [total_tokens], offsets [n + 1])."""
    for path in (token_path, offset_path):
        if not path.is_file():
            raise UserError(f"prepared dataset is incomplete: {path} is missing")
    offsets = _map(offset_path, np.dtype(np.int64))
    tokens = _map(token_path, np.dtype(dtype))
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise UserError(f"prepared dataset is corrupt: {offset_path} does not match {token_path}")
    return tokens, offsets


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise UserError(f"prepared dataset is corrupt: {path} is not a whole number of {dtype} values")
    if size == 0:  # np.memmap refuses empty files; an empty split is still valid
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
