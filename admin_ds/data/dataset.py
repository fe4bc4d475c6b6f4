"""A parallel dataset read from a prepared directory, memory-mapped so that opening it costs nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from admin_ds.data.binarize import read_indexed
from admin_ds.data.meta import DataInfo, load_meta, offset_file, token_file
from admin_ds.errors import UserError
from admin_ds.vocab import SPECIAL_IDS, SpecialIds

__all__ = ["DataInfo", "ParallelDataset", "load_meta"]


class ParallelDataset:
    """Sentence pairs as raw token ids (no BOS/EOS), indexed 0 .. len - 1.

    Args:
        src_tokens: [src_total] every source sentence's ids, concatenated.
        src_offsets: [n + 1] sentence i is src_tokens[src_offsets[i]:src_offsets[i + 1]].
        tgt_tokens, tgt_offsets: the same for the target side.
        special_ids: the ids batches are padded with (a prepared dataset's meta.json).
        vocab_sizes: (source, target) vocabulary sizes, to refuse ids outside them when batching.

    Attributes:
        src_sizes, tgt_sizes: [n] int64 number of ids per sentence (in memory; the ids stay on disk).
    """

    def __init__(self, src_tokens: np.ndarray, src_offsets: np.ndarray, tgt_tokens: np.ndarray,
                 tgt_offsets: np.ndarray, special_ids: SpecialIds = SPECIAL_IDS,
                 vocab_sizes: Optional[tuple[int, int]] = None):
        if len(src_offsets) != len(tgt_offsets):
            raise ValueError(f"source has {len(src_offsets) - 1} sentences but target has {len(tgt_offsets) - 1}")
        # np.asarray keeps memory maps mapped but drops the np.memmap subclass, whose slicing is ~50x slower.
        self.src_tokens, self.src_offsets = np.asarray(src_tokens), np.asarray(src_offsets)
        self.tgt_tokens, self.tgt_offsets = np.asarray(tgt_tokens), np.asarray(tgt_offsets)
        self.src_sizes = np.diff(np.asarray(src_offsets, dtype=np.int64))
        self.tgt_sizes = np.diff(np.asarray(tgt_offsets, dtype=np.int64))
        # What batches are padded with, and (when known) the vocabularies ids must fall in.
        self.special_ids, self.vocab_sizes = special_ids, vocab_sizes

    @classmethod
    def load(cls, data_dir: str | Path, split: str) -> ParallelDataset:
        """Memory-map `split` ("train", "valid", "test") of a directory written by `admin-ds prepare`."""
        info = load_meta(data_dir)
        if split not in info.split_sizes:
            raise UserError(f"{data_dir} has no {split!r} split; it has {', '.join(info.split_sizes)}")
        src = read_indexed(token_file(info.data_dir, split, info.source_lang),
                           offset_file(info.data_dir, split, info.source_lang), info.dtype)
        tgt = read_indexed(token_file(info.data_dir, split, info.target_lang),
                           offset_file(info.data_dir, split, info.target_lang), info.dtype)
        dataset = cls(src[0], src[1], tgt[0], tgt[1], info.special_ids, (info.src_vocab_size, info.tgt_vocab_size))
        if len(dataset) != info.split_sizes[split]:
            raise UserError(f"prepared dataset {data_dir} is corrupt: {split} has {len(dataset)} pairs, "
                            f"meta.json says {info.split_sizes[split]}")
        return dataset

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> ParallelDataset:
        """An in-memory dataset from lists of id lists (tests, small experiments)."""
        def pack(sentences):
            lengths = np.array([len(s) for s in sentences], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            tokens = np.fromiter((t for s in sentences for t in s), dtype=np.int64, count=int(offsets[-1]))
            return tokens, offsets
        return cls(*pack(src), *pack(tgt))

    def __len__(self) -> int:
        return len(self.src_sizes)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(src_ids [src_len], tgt_ids [tgt_len]) of pair `index`, views into the stored arrays."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} out of range for a dataset of {len(self)}")
        index = int(index) % len(self)
        src = self.src_tokens[self.src_offsets[index] : self.src_offsets[index + 1]]
        tgt = self.tgt_tokens[self.tgt_offsets[index] : self.tgt_offsets[index + 1]]
        return src, tgt
