"""Encoding sentences to token ids in parallel, dropping unusable pairs, and the .bin/.idx array files.

A side of a split is stored as two flat arrays (see `admin_ds.data.meta` for the layout):
    tokens  [total_tokens]  every kept sentence's ids, concatenated
    offsets [n + 1]         int64; sentence i is tokens[offsets[i]:offsets[i + 1]]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from admin_ds.data.tokenizer import Tokenizer
from admin_ds.errors import UserError

# Lines per call into SentencePiece: big enough that its thread pool stays busy, small enough that the
# progress bar moves and that the Python lists of one chunk stay small before they become numpy arrays.
CHUNK_LINES = 20_000


@dataclass
class EncodedSide:
    """One language of a split, encoded: flat ids plus per-sentence lengths."""

    tokens: np.ndarray  # [total_tokens], int64
    lengths: np.ndarray  # [n], int64


@dataclass
class FilteredSplit:
    """The kept pairs of a split as arrays ready to write, and how many pairs were dropped and why."""

    src_tokens: np.ndarray  # [src_total]
    src_offsets: np.ndarray  # [n + 1], int64
    tgt_tokens: np.ndarray  # [tgt_total]
    tgt_offsets: np.ndarray  # [n + 1], int64
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return len(self.src_offsets) - 1


def encode_lines(tokenizer: Tokenizer, lines: Sequence[str], num_threads: int, progress=None) -> EncodedSide:
    """Encode sentences in order with `num_threads` SentencePiece threads.

    Threads inside SentencePiece instead of a process pool: the C++ encoder releases the GIL, so threads
    scale like processes here (measured on 2 cores) with no pickling of lines and ids, no model reload per
    worker and no fork of a process that may hold torch's thread pools.

    Args:
        progress: an optional tqdm bar, advanced by the number of lines encoded.
    """
    token_chunks, length_chunks = [], []
    for start in range(0, len(lines), CHUNK_LINES):
        chunk = lines[start : start + CHUNK_LINES]
        ids = tokenizer.encode_batch(chunk, num_threads=num_threads)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        token_chunks.append(
            np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        )
        length_chunks.append(lengths)
        if progress is not None:
            progress.update(len(chunk))
    if not length_chunks:
        return EncodedSide(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return EncodedSide(np.concatenate(token_chunks), np.concatenate(length_chunks))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def filter_pairs(
    src_lines: Sequence[str],
    tgt_lines: Sequence[str],
    src: EncodedSide,
    tgt: EncodedSide,
    max_positions: int,
    dtype: np.dtype,
) -> FilteredSplit:
    """Keep the pairs a model can use; count the others per reason.

    A pair is dropped as "empty" when either side is empty (as text or as ids) and as "too_long" when
    either side needs more than `max_positions` positions; the model adds one token (EOS to the source,
    BOS to the target input), so a side of L ids needs L + 1 positions.
    """
    src_empty = np.fromiter((not line for line in src_lines), dtype=bool, count=len(src_lines))
    tgt_empty = np.fromiter((not line for line in tgt_lines), dtype=bool, count=len(tgt_lines))
    empty = src_empty | tgt_empty | (src.lengths == 0) | (tgt.lengths == 0)
    too_long = ~empty & ((src.lengths + 1 > max_positions) | (tgt.lengths + 1 > max_positions))
    keep = ~(empty | too_long)

    def kept(side: EncodedSide) -> tuple[np.ndarray, np.ndarray]:
        # Expand the per-sentence keep mask to a per-token mask to select tokens without a Python loop.
        tokens = side.tokens[np.repeat(keep, side.lengths)].astype(dtype)
        return tokens, _offsets(side.lengths[keep])

    src_tokens, src_offsets = kept(src)
    tgt_tokens, tgt_offsets = kept(tgt)
    return FilteredSplit(
        src_tokens, src_offsets, tgt_tokens, tgt_offsets,
        dropped={"empty": int(empty.sum()), "too_long": int(too_long.sum())},
    )


def write_indexed(tokens: np.ndarray, offsets: np.ndarray, token_path: Path, offset_path: Path) -> None:
    """Write one side as raw arrays: tokens in their own dtype, offsets as int64."""
    tokens.tofile(token_path)
    offsets.astype(np.int64).tofile(offset_path)


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
