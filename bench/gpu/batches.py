"""Training batches for the GPU check: WMT-shaped sentence lengths, bucketed and padded by our own code.

The device machine gets only the repository (no ../shared/data), so lengths are drawn here, from a fit to
newstest2014 en-de (3,003 pairs; word counts x 1.3 subword pieces per word, the usual rate of a 32k joint
BPE on WMT en-de):

    source length  ~ round(exp(N(3.11, 0.54)))          median 22 pieces, 99th percentile 79
    target length  ~ round(source x exp(N(0, 0.20)))     log length ratio: std 0.198 on the words

both clipped to [1, 250]. A pool of a million such pairs goes through ``TokenBatchSampler`` (length
buckets under ``max_tokens``, batch order shuffled) and ``collate``, exactly as ``admin-ds train`` batches
a corpus; token ids are uniform in the vocabulary. A bigger pool gives finer buckets and less padding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from admin_ds.data.batching import Batch, TokenBatchSampler, collate
from admin_ds.model import ModelConfig
from admin_ds.training.plan import GIB, PlanConfig, largest_fitting_max_tokens, make_plan
from admin_ds.vocab import SPECIAL_IDS

SRC_LOG_MEAN, SRC_LOG_STD = 3.11, 0.54
TGT_LOG_RATIO_STD = 0.20
MAX_LENGTH = 250
POOL = 1_000_000
FIRST_ID = 4  # ids below are the special pieces (pad, unk, bos, eos)


def synthetic_lengths(count: int, seed: int, max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """[count] source and [count] target lengths in pieces (without EOS/BOS), as described above."""
    rng = np.random.default_rng(seed)
    src = np.clip(np.rint(np.exp(rng.normal(SRC_LOG_MEAN, SRC_LOG_STD, count))), 1, max_length)
    tgt = np.clip(np.rint(src * np.exp(rng.normal(0.0, TGT_LOG_RATIO_STD, count))), 1, max_length)
    return src.astype(np.int64), tgt.astype(np.int64)


@dataclass
class TimedBatch:
    """A collated batch with what the figures need, read on the host before any timing.

    src_lengths [N] and tgt_lengths [N]: non-pad positions per row (ids + EOS; BOS + ids); pad_slots and
    slots: padding and all positions of src_tokens and tgt_output together."""

    batch: Batch
    src_lengths: np.ndarray
    tgt_lengths: np.ndarray
    pad_slots: int
    slots: int

    @property
    def tokens(self) -> int:
        return int(self.src_lengths.sum() + self.tgt_lengths.sum())

    @property
    def shape(self) -> list[int]:
        return [len(self.batch), int(self.batch.src_tokens.size(1)), int(self.batch.tgt_output.size(1))]


def describe(batch: Batch) -> TimedBatch:
    pad = SPECIAL_IDS.pad
    src_lengths = batch.src_tokens.ne(pad).sum(1).numpy()
    tgt_lengths = batch.tgt_output.ne(pad).sum(1).numpy()
    slots = batch.src_tokens.numel() + batch.tgt_output.numel()
    return TimedBatch(batch, src_lengths, tgt_lengths, slots - int(src_lengths.sum() + tgt_lengths.sum()), slots)


def training_batches(max_tokens: int, count: int, vocab: int, seed: int = 1, pool: int = POOL,
                     max_length: int = MAX_LENGTH) -> list[TimedBatch]:
    """The first ``count`` batches of a shuffled epoch over ``pool`` synthetic pairs (deterministic)."""
    src_sizes, tgt_sizes = synthetic_lengths(pool, seed, min(max_length, max_tokens - 1))
    sampler = TokenBatchSampler(src_sizes, tgt_sizes, max_tokens, seed=seed)
    rng = np.random.default_rng(seed + 1)
    batches = []
    for ids in itertools.islice(iter(sampler), count):
        sizes = np.concatenate([src_sizes[ids], tgt_sizes[ids]])
        pieces = np.split(rng.integers(FIRST_ID, vocab, int(sizes.sum())), np.cumsum(sizes)[:-1])
        examples = list(zip(pieces[: len(ids)], pieces[len(ids):]))
        batches.append(describe(collate(examples, ids, vocab_sizes=(vocab, vocab))))
    return batches


def padding_share(batches: list[TimedBatch]) -> float:
    """Pad positions over all positions, source and target together."""
    return sum(b.pad_slots for b in batches) / sum(b.slots for b in batches)


def planned_bytes(arch: str, model: ModelConfig, precision: str, max_tokens: int, device: str) -> float:
    """``admin-ds plan``'s total per GPU for one rank at ZeRO-2 (the checkpointing ``model`` has)."""
    setup = PlanConfig(zero=2, world_size=1, precision=precision, max_tokens=max_tokens, device=device)
    return make_plan(arch, model, setup).gpu_total


def planned_max_tokens(arch: str, model: ModelConfig, precisions: list[str], memory_bytes: float, fraction: float,
                       cap: int, step: int, device: str) -> int:
    """The largest multiple of ``step`` up to ``cap`` whose plan (checkpointing off, each precision) fits
    ``fraction`` of ``memory_bytes`` (``admin-ds plan``'s own search, rounded down to ``step``); ``step`` if
    none does."""
    plain = ModelConfig.from_dict({**model.to_dict(), "checkpoint_every": 0})
    largest = [largest_fitting_max_tokens(arch, plain, PlanConfig(zero=2, precision=p, device=device,
                                                                  gpu_memory=memory_bytes / GIB), fraction)
               for p in precisions]
    tokens = min(cap, *[t or 0 for t in largest])
    return max(step, tokens - tokens % step)


def to_device(batches: list[TimedBatch], device: torch.device) -> list[Batch]:
    return [b.batch.to(device) for b in batches]


__all__ = ["GIB", "TimedBatch", "padding_share", "planned_bytes", "planned_max_tokens", "synthetic_lengths",
           "to_device", "training_batches"]
