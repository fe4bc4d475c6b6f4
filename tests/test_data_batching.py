"""Token batching: the max-tokens bound, exact coverage across ranks with equal counts, and resume."""

import numpy as np
import pytest
import torch

from admin_ds.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Batch,
    BatchIterator,
    ParallelDataset,
    PrepareConfig,
    TokenBatchSampler,
    collate,
    prepare,
    write_synthetic_corpus,
)
from admin_ds.errors import UserError


def random_sizes(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 60, n), rng.integers(1, 60, n)


def epoch_batches(sampler):
    return [list(batch) for batch in sampler]


def test_collate_adds_eos_bos_and_pads_right():
    examples = [(np.array([10, 11, 12]), np.array([20])), (np.array([13]), np.array([21, 22, 23, 24]))]
    batch = collate(examples, [7, 3])
    assert batch.src_tokens.tolist() == [[10, 11, 12, EOS_ID], [13, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.tgt_input.tolist() == [[BOS_ID, 20, PAD_ID, PAD_ID, PAD_ID], [BOS_ID, 21, 22, 23, 24]]
    assert batch.tgt_output.tolist() == [[20, EOS_ID, PAD_ID, PAD_ID, PAD_ID], [21, 22, 23, 24, EOS_ID]]
    assert batch.ntokens == 2 + 5 == int((batch.tgt_output != PAD_ID).sum())
    assert batch.ids.tolist() == [7, 3] and len(batch) == 2
    assert all(t.dtype == torch.long for t in (batch.src_tokens, batch.tgt_input, batch.tgt_output, batch.ids))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_input, batch.tgt_input)
    with pytest.raises(ValueError):
        collate([], [])


@pytest.mark.parametrize("max_tokens", [64, 300, 2048])
def test_batches_respect_max_tokens_on_both_sides(max_tokens):
    src_sizes, tgt_sizes = random_sizes()
    sampler = TokenBatchSampler(src_sizes, tgt_sizes, max_tokens, seed=1)
    for batch in sampler:
        assert len(batch) * (src_sizes[batch].max() + 1) <= max_tokens
        assert len(batch) * (tgt_sizes[batch].max() + 1) <= max_tokens
    # The bound is what a collated batch really occupies.
    dataset = ParallelDataset.from_lists([[5] * s for s in src_sizes], [[6] * t for t in tgt_sizes])
    for batch in BatchIterator.build(dataset, max_tokens, seed=1):
        assert batch.src_tokens.numel() <= max_tokens and batch.tgt_input.numel() <= max_tokens


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_pair_once_per_epoch_across_ranks_with_equal_counts(world_size, shuffle):
    src_sizes, tgt_sizes = random_sizes(n=997)
    samplers = [TokenBatchSampler(src_sizes, tgt_sizes, 500, seed=3, rank=r, world_size=world_size, shuffle=shuffle)
                for r in range(world_size)]
    orders = []
    for epoch in (1, 2, 3):
        per_rank = [epoch_batches(s) for s in samplers]
        assert all(s.epoch == epoch + 1 for s in samplers), "finishing an epoch moves to the next"
        counts = {len(batches) for batches in per_rank}
        assert counts == {len(samplers[0])}, f"unequal batch counts per rank: {counts}"
        seen = sorted(i for batches in per_rank for batch in batches for i in batch)
        assert seen == list(range(997))
        orders.append([batch for batches in per_rank for batch in batches])
    assert (orders[0] != orders[1]) == shuffle


def test_batch_count_not_a_multiple_of_world_size_is_fixed_by_splitting():
    # 7 equal pairs of 10 tokens with room for 2 per batch: 4 batches, which 3 ranks cannot share evenly.
    sizes = np.full(7, 9)
    alone = TokenBatchSampler(sizes, sizes, 20, world_size=1)
    assert len(alone) == 4
    ranks = [TokenBatchSampler(sizes, sizes, 20, rank=r, world_size=3) for r in range(3)]
    per_rank = [epoch_batches(s) for s in ranks]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    assert sorted(i for b in per_rank for batch in b for i in batch) == list(range(7))


def test_impossible_requests_raise_user_errors():
    with pytest.raises(UserError, match="longer than --max-tokens 50"):
        TokenBatchSampler([10, 60], [10, 10], 50)
    with pytest.raises(UserError, match="cannot give each of 4 ranks"):
        TokenBatchSampler([3, 3, 3], [3, 3, 3], 100, world_size=4, rank=0)
    with pytest.raises(UserError, match="multiple of 3"):  # 4 singleton batches, 4 pairs: no split possible
        TokenBatchSampler([9] * 4, [9] * 4, 10, world_size=3)
    with pytest.raises(UserError, match="--max-tokens must be positive"):
        TokenBatchSampler([3], [3], 0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(world_size):
    src_sizes, tgt_sizes = random_sizes(n=600, seed=5)
    def make(rank):
        return TokenBatchSampler(src_sizes, tgt_sizes, 400, seed=9, rank=rank, world_size=world_size)

    for rank in range(world_size):
        reference = make(rank)
        reference.set_epoch(2)
        full = epoch_batches(reference) + epoch_batches(reference)  # epochs 2 and 3

        interrupted = make(rank)
        interrupted.set_epoch(2)
        stream = iter(interrupted)
        taken = [next(stream) for _ in range(5)]
        state = interrupted.state_dict()
        assert state["epoch"] == 2 and state["position"] == 5

        resumed = make(rank)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # what a trainer might do after loading: must not restart the epoch
        rest = epoch_batches(resumed) + epoch_batches(resumed)
        assert taken + rest == full


def test_resume_at_epoch_end_starts_the_next_epoch():
    src_sizes, tgt_sizes = random_sizes(n=200)
    sampler = TokenBatchSampler(src_sizes, tgt_sizes, 300, seed=2)
    stream = iter(sampler)
    for _ in range(len(sampler)):
        next(stream)
    state = sampler.state_dict()  # taken right after the last batch, before the generator finishes
    assert (state["epoch"], state["position"]) == (1, len(sampler))
    resumed = TokenBatchSampler(src_sizes, tgt_sizes, 300, seed=2)
    resumed.load_state_dict(state)
    fresh = TokenBatchSampler(src_sizes, tgt_sizes, 300, seed=2)
    fresh.set_epoch(2)
    assert epoch_batches(resumed) == epoch_batches(fresh)


def test_resume_with_changed_settings_is_refused():
    src_sizes, tgt_sizes = random_sizes(n=100)
    state = TokenBatchSampler(src_sizes, tgt_sizes, 300, seed=2).state_dict()
    with pytest.raises(UserError, match="max_tokens=300, this run has 400"):
        TokenBatchSampler(src_sizes, tgt_sizes, 400, seed=2).load_state_dict(state)
    with pytest.raises(UserError, match="seed"):
        TokenBatchSampler(src_sizes, tgt_sizes, 300, seed=3).load_state_dict(state)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    prefixes = write_synthetic_corpus(root / "text", n_train=500, n_valid=30, n_test=30, seed=4)
    prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"], source_lang="src",
                          target_lang="tgt", out_dir=root / "data", vocab_size=400, progress=False))
    return root / "data"


def test_batch_iterator_over_a_prepared_dataset_resumes_identically(toy_data):
    dataset = ParallelDataset.load(toy_data, "train")
    reference = BatchIterator.build(dataset, max_tokens=256, seed=7)
    full = list(reference)
    assert reference.epoch == 2
    assert sorted(i for b in full for i in b.ids.tolist()) == list(range(len(dataset)))
    for batch in full:
        for row, index in enumerate(batch.ids.tolist()):
            src, tgt = dataset[index]
            assert batch.src_tokens[row, : len(src) + 1].tolist() == src.tolist() + [EOS_ID]
            assert batch.tgt_input[row, : len(tgt) + 1].tolist() == [BOS_ID] + tgt.tolist()

    interrupted = BatchIterator.build(dataset, max_tokens=256, seed=7)
    for step, _ in enumerate(interrupted, start=1):
        if step == 3:
            break  # e.g. the trainer saves a checkpoint and stops here
    resumed = BatchIterator.build(dataset, max_tokens=256, seed=7)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest):
        assert torch.equal(a.src_tokens, b.src_tokens) and torch.equal(a.tgt_output, b.tgt_output)
