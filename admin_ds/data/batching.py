"""Token-based batches: collation into padded tensors, a length-bucketed sharded sampler, an epoch iterator.

Batching follows fairseq's `--max-tokens`: a batch of B pairs whose longest padded side has L positions
(ids plus the EOS or BOS the model adds) satisfies B * L <= max_tokens, for source and target alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from admin_ds.data.dataset import ParallelDataset
from admin_ds.data.greedy import cut_greedily
from admin_ds.errors import UserError
from admin_ds.vocab import SPECIAL_IDS, SpecialIds


@dataclass
class Batch:
    """A padded batch; every tensor is right-padded with the pad id.

    Shape legend: N batch, S source time, T target time.
        src_tokens: [N, S] source ids + EOS
        tgt_input:  [N, T] BOS + target ids (what the decoder reads)
        tgt_output: [N, T] target ids + EOS (what it must predict, position by position)
        ntokens:    number of non-pad tokens in tgt_output (the loss normaliser)
        ids:        [N] dataset indices of the pairs
        src_padded: whether any source row is padded, known on the host from the lengths, so the model
                    need not ask the device (a host sync per forward); None = unknown, the model asks
        src_lengths, tgt_lengths: [N] host arrays, each row's own positions in src_tokens (ids + EOS) and
                    tgt_input (BOS + ids), for the model FLOPs training reports (training/speed.py) without
                    reading the device; None = not known (a batch built by hand)
    """

    src_tokens: torch.Tensor
    tgt_input: torch.Tensor
    tgt_output: torch.Tensor
    ntokens: int
    ids: torch.Tensor
    src_padded: Optional[bool] = None
    src_lengths: Optional[np.ndarray] = None
    tgt_lengths: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.ids.numel()

    def to(self, device, non_blocking: bool = False) -> Batch:
        """The same batch with its tensors on `device`."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(self, src_tokens=move(self.src_tokens), tgt_input=move(self.tgt_input),
                                   tgt_output=move(self.tgt_output), ids=move(self.ids))


def collate(examples: Sequence[tuple[np.ndarray, np.ndarray]], ids: Sequence[int],
            special: SpecialIds = SPECIAL_IDS, vocab_sizes: Optional[tuple[int, int]] = None) -> Batch:
    """Pad raw (src_ids, tgt_ids) pairs into a Batch, adding EOS to the source and BOS/EOS to the target.

    With ``vocab_sizes`` (source, target), ids outside the vocabularies are a UserError here, on the host,
    where data enters training: the model's forward does not check values (that cost host syncs), and
    ``training.setup.resolve_model_config`` checks once that the model's vocabularies are the data's.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    src_ids, tgt_ids = zip(*examples)
    src_tokens, src_lengths = _pad_right(src_ids, None, special.eos, special.pad)  # [N, S]
    tgt_input, tgt_lengths = _pad_right(tgt_ids, special.bos, None, special.pad)  # [N, T]
    tgt_output, _ = _pad_right(tgt_ids, None, special.eos, special.pad)  # [N, T]
    if vocab_sizes is not None:
        for side, rows, size in (("source", src_tokens, vocab_sizes[0]), ("target", tgt_output, vocab_sizes[1])):
            if rows.size and int(rows.max()) >= size:
                raise UserError(f"a {side} sentence holds id {int(rows.max())}, outside the dataset's "
                                f"vocabulary of {size} (meta.json): the prepared data is corrupt")
    ntokens = int(tgt_lengths.sum()) + len(examples)  # every target row also predicts EOS
    return Batch(torch.from_numpy(src_tokens), torch.from_numpy(tgt_input), torch.from_numpy(tgt_output),
                 ntokens, torch.as_tensor(np.asarray(ids, dtype=np.int64)),
                 src_padded=bool(src_lengths.min() < src_lengths.max()), src_lengths=src_lengths + 1,
                 tgt_lengths=tgt_lengths + 1)


def _pad_right(sequences: Sequence[np.ndarray], lead: Optional[int], tail: Optional[int],
               pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `lead` + sequence + `tail` (each optional), right-padded with `pad` into [N, 1 + max_len].

    Vectorised (one scatter instead of a Python loop over rows): a batch can hold hundreds of short pairs.
    Returns the padded int64 array and the sequence lengths [N].
    """
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    rows = np.full((len(sequences), int(lengths.max()) + 1), pad, dtype=np.int64)
    shift = 0 if lead is None else 1
    if lead is not None:
        rows[:, 0] = lead
    flat = np.concatenate(sequences).astype(np.int64, copy=False) if lengths.sum() else np.zeros(0, np.int64)
    row_index = np.repeat(np.arange(len(sequences)), lengths)
    starts = np.cumsum(lengths) - lengths
    col_index = np.arange(len(flat)) - np.repeat(starts, lengths) + shift
    rows[row_index, col_index] = flat
    if tail is not None:
        rows[np.arange(len(sequences)), lengths] = tail
    return rows, lengths


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``max_tokens`` padded tokens, longest sentences first
    (decoding: the longest batch runs first, so running out of memory shows at once).

    A sentence longer than ``max_tokens`` gets a batch of its own.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(sizes)), -sizes))  # longest first, ties in input order
    return [batch.tolist() for batch in cut_greedily(order, sizes[order], max_tokens)]


class TokenBatchSampler:
    """Length-bucketed token batches, reshuffled every epoch, sharded over data-parallel ranks.

    Each epoch: shuffle the pairs with a generator seeded by (seed, epoch); stable-sort them by padded
    length (so equal lengths stay in random order and batch contents change between epochs); cut the
    sorted list greedily into batches under `max_tokens`; shuffle the batch order; deal batch k to rank
    k % world_size. All ranks compute the same global list from the same seed, so no communication is needed.

    Equal batch counts per rank: when the number of batches is not a multiple of world_size, the batches
    with the most pairs are halved until it is. A half of a valid batch is valid (fewer rows, no longer
    rows) and every pair is still used exactly once per epoch across ranks; repeating batches instead would
    train on some pairs twice. Greedy batching depends only on the sorted lengths, which are the same every
    epoch, so the count per rank (`len(sampler)`) is the same every epoch too.

    Resume: `position` counts the batches this rank has handed out in `epoch`. It is the same on every rank
    (equal counts), so the state saved by rank 0 restores all ranks; a sampler restored with
    `load_state_dict` yields exactly the batches the saved one had not yet yielded.

    Resume on another number of ranks: the epoch's global list stays the one its first world size built;
    the global batches already consumed (start of the segment + position * world_size) are kept as they
    were, and the rest is halved further to a multiple of the new world size and dealt out with the new
    striding. `segments` records each (first global batch, world size) of the current epoch, so a later
    resume rebuilds the same list; every pair is still seen once per epoch (docs/contracts.md §5).

    Args:
        src_sizes, tgt_sizes: [n] ids per sentence, without EOS/BOS.
        max_tokens: bound on batch size * longest padded side.
        seed: shuffling seed; shared by all ranks.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        shuffle: False for validation: batches in length order, identical every epoch.
    """

    def __init__(self, src_sizes, tgt_sizes, max_tokens: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        src_sizes = np.asarray(src_sizes, dtype=np.int64)
        tgt_sizes = np.asarray(tgt_sizes, dtype=np.int64)
        if src_sizes.shape != tgt_sizes.shape or src_sizes.ndim != 1:
            raise ValueError(f"src_sizes {src_sizes.shape} and tgt_sizes {tgt_sizes.shape} must be equal 1-d shapes")
        if max_tokens < 1:
            raise UserError(f"--max-tokens must be positive, got {max_tokens}")
        if seed < 0:
            raise UserError(f"--seed must be non-negative, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0 .. world_size - 1 = {world_size - 1}")
        self.src_sizes, self.tgt_sizes = src_sizes, tgt_sizes
        # Positions a pair occupies in a padded batch: its longer side plus the added EOS/BOS.
        self.num_tokens = np.maximum(src_sizes, tgt_sizes) + 1
        too_long = np.flatnonzero(self.num_tokens > max_tokens)
        if too_long.size:
            first = int(too_long[0])
            raise UserError(f"{too_long.size} pairs are longer than --max-tokens {max_tokens} (pair {first} needs "
                            f"{self.num_tokens[first]} with EOS/BOS); raise --max-tokens or prepare the data with "
                            f"--max-positions {max_tokens}")
        if len(src_sizes) < world_size:
            raise UserError(f"{len(src_sizes)} pairs cannot give each of {world_size} ranks a batch")
        self._length_ranks = _length_ranks(src_sizes, tgt_sizes)
        self.max_tokens, self.seed, self.shuffle = max_tokens, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 1
        self.position = 0
        self.segments: list[tuple[int, int]] = [(0, world_size)]  # (first global batch, world size) this epoch
        self._cached_key, self._cached_batches = None, None
        self._rank_batches()  # fail now, not mid-training, if equal counts are impossible

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch's segment: the same for every rank, and every epoch
        of a run that keeps its number of ranks."""
        return len(self._rank_batches())

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of `epoch`; a no-op for the current epoch, so it cannot undo a resume."""
        if epoch != self.epoch:
            self.epoch, self.position, self.segments = epoch, 0, [(0, self.world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's remaining batches of the current epoch, then move to the next epoch."""
        if self.position >= len(self):  # resumed exactly at an epoch's end
            self.set_epoch(self.epoch + 1)
        batches = self._rank_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1  # before yielding: a state saved while the batch is in use excludes it
            yield batch.tolist()
        self.set_epoch(self.epoch + 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "max_tokens": self.max_tokens,
                "world_size": self.world_size, "num_examples": len(self.src_sizes), "shuffle": self.shuffle,
                "segments": [list(segment) for segment in self.segments]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state, on this sampler's number of ranks; the batch order must not depend on
        anything else that changed since. A state without `segments` (older checkpoints) had one."""
        for key in ("seed", "max_tokens", "num_examples", "shuffle"):
            saved, current = state.get(key), self.state_dict()[key]
            if saved != current:
                raise UserError(f"cannot resume the batch order: the checkpoint has {key}={saved}, this run has "
                                f"{current}; resume with the same data, --max-tokens and --seed")
        epoch, position = int(state["epoch"]), int(state["position"])
        segments = [(int(start), int(world)) for start, world in state.get("segments", [[0, state["world_size"]]])]
        start, world = segments[-1]
        total = len(self._epoch_batches(epoch, segments))
        if not 0 <= position <= (total - start) // world:
            raise UserError(f"cannot resume the batch order: position {position} is out of range")
        if world != self.world_size:
            consumed = start + position * world  # global batches of this epoch already trained on
            segments = segments[:-1] if position == 0 else segments
            segments, position = [*segments, (consumed, self.world_size)], 0
        self.epoch, self.position, self.segments = epoch, position, segments
        self._rank_batches()  # the rest of the epoch must split over this many ranks: fail now if not

    def _rank_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch's last segment."""
        key = (self.epoch, tuple(self.segments))
        if self._cached_key != key:
            self._cached_key, self._cached_batches = None, None  # free the old epoch before building the next
            start = self.segments[-1][0]
            self._cached_batches = _compact(self._epoch_batches(self.epoch, self.segments)[start + self.rank ::
                                                                                            self.world_size])
            self._cached_key = key
        return self._cached_batches

    def _epoch_batches(self, epoch: int, segments: list[tuple[int, int]]) -> list[np.ndarray]:
        """The global batches of `epoch` as its segments leave them: built for the first world size, the
        rest after each later segment's start halved to a multiple of that segment's world size."""
        batches = self._global_batches(epoch, segments[0][1])
        for (start, world), (_, before) in zip(segments[1:], segments):
            rest = batches[start:]
            pairs = sum(len(batch) for batch in rest)
            if len(rest) + (-len(rest) % world) > pairs:
                raise UserError(f"cannot resume epoch {epoch} on {world} ranks: the {pairs} pairs it has left cannot "
                                f"give each rank a batch; resume on {before} ranks until the epoch ends")
            batches = batches[:start] + _split_to_multiple(rest, world, pairs)
        return batches

    def _global_batches(self, epoch: int, world_size: Optional[int] = None) -> list[np.ndarray]:
        """Every rank's batches of `epoch`, as arrays of pair indices; a multiple of `world_size` (by default
        this sampler's) of them."""
        world_size = world_size or self.world_size
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.num_tokens)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        # Stable, so equal lengths keep the shuffled order: as a lexsort by (padded size, source, target).
        order = order[np.argsort(self._length_ranks[order], kind="stable")]
        batches = cut_greedily(order, self.num_tokens[order], self.max_tokens)
        batches = _split_to_multiple(batches, world_size, n)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches



def _compact(batches: list[np.ndarray]) -> list[np.ndarray]:
    """The same batches as views of one new array of just their indices (int32 when it can hold them).

    A rank's batches are views into the epoch's order of all pairs; copying them out lets that go, so a
    rank keeps 1/world_size of it (4 bytes per pair instead of 8 per pair of all ranks).
    """
    if not batches:
        return batches
    flat = np.concatenate(batches)
    if len(flat) and int(flat.max()) < 2**31:
        flat = flat.astype(np.int32)
    return np.split(flat, np.cumsum([len(batch) for batch in batches])[:-1])


def _length_ranks(src_sizes: np.ndarray, tgt_sizes: np.ndarray) -> np.ndarray:
    """[n] the rank of each pair's (padded size, source length, target length) among the distinct triples.

    Sorting these ranks stably equals `np.lexsort` of the three keys, at a fraction of the cost per epoch:
    a corpus has few distinct length pairs (~13k for 40M pairs of WMT-like lengths), so the ranks fit in
    uint16, which numpy sorts stably by radix (0.09 s for 4M pairs against 1.3 s for the lexsort).
    """
    if not len(src_sizes):
        return np.zeros(0, dtype=np.uint16)
    tgt_span = int(tgt_sizes.max()) + 1
    pair = src_sizes * tgt_span + tgt_sizes  # [n] both lengths in one number; the padded size follows from them
    table_size = int(pair.max()) + 1
    if table_size <= 2**22:  # count into a table over all length pairs rather than sort n numbers
        seen, inverse = np.flatnonzero(np.bincount(pair, minlength=table_size)), None
    else:
        seen, inverse = np.unique(pair, return_inverse=True)
    src, tgt = np.divmod(seen, tgt_span)
    rank_of_seen = np.empty(len(seen), dtype=np.int64)
    rank_of_seen[np.lexsort((tgt, src, np.maximum(src, tgt) + 1))] = np.arange(len(seen))
    if inverse is None:
        table = np.zeros(table_size, dtype=np.int32)
        table[seen] = rank_of_seen
        ranks = table[pair]
    else:
        ranks = rank_of_seen[inverse]
    return ranks.astype(np.uint16 if len(seen) <= 2**16 else np.int64)


def _split_to_multiple(batches: list[np.ndarray], world_size: int, num_examples: int) -> list[np.ndarray]:
    """Halve the largest batches until their number is a multiple of world_size (see TokenBatchSampler)."""
    missing = -len(batches) % world_size
    if len(batches) + missing > num_examples:
        raise UserError(f"{num_examples} pairs cannot be split into a multiple of {world_size} batches, one "
                        f"per rank and step; use fewer ranks or more data")
    for _ in range(missing):
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


class BatchIterator:
    """Dataset + sampler + collate: `for batch in iterator` runs the rest of the current epoch.

    The next `for` loop runs the next epoch. Collation happens in the calling process on demand, with no
    prefetching worker, so `state_dict()` counts exactly the batches the caller has received.
    """

    def __init__(self, dataset: ParallelDataset, sampler: TokenBatchSampler):
        if len(sampler.src_sizes) != len(dataset):
            raise ValueError(f"sampler covers {len(sampler.src_sizes)} pairs but the dataset has {len(dataset)}")
        self.dataset, self.sampler = dataset, sampler

    @classmethod
    def build(cls, dataset: ParallelDataset, max_tokens: int, seed: int = 0, rank: int = 0, world_size: int = 1,
              shuffle: bool = True) -> BatchIterator:
        sampler = TokenBatchSampler(dataset.src_sizes, dataset.tgt_sizes, max_tokens, seed=seed, rank=rank,
                                    world_size=world_size, shuffle=shuffle)
        return cls(dataset, sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for ids in self.sampler:
            yield collate([self.dataset[i] for i in ids], ids, self.dataset.special_ids, self.dataset.vocab_sizes)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
