"""The vectorised batch cutting and length sort give exactly the batches of the row-by-row definitions."""

import numpy as np
import pytest

from admin_ds.data.batching import TokenBatchSampler, cut_greedily, token_batches


def cut_row_by_row(order, sorted_sizes, max_tokens):
    """The definition: a batch takes the next row unless (rows + 1) * longest row would exceed max_tokens."""
    cuts, start = [], 0
    sizes = sorted_sizes.tolist()
    for pos, size in enumerate(sizes):
        width = max(sizes[start], size)
        if pos > start and (pos - start + 1) * width > max_tokens:
            cuts.append(pos)
            start = pos
    return [batch for batch in np.split(order, cuts) if batch.size]


def random_sizes(rng, n, high):
    sizes = rng.integers(0, high, n)
    sizes[rng.random(n) < 0.05] = high * 3  # some rows longer than max_tokens
    return sizes


@pytest.mark.parametrize("seed", range(40))
def test_cut_greedily_equals_the_row_by_row_rule(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    max_tokens = int(rng.integers(1, 120))
    sizes = random_sizes(rng, n, int(rng.integers(1, 60)))
    if seed % 3 == 0:
        sizes = np.maximum(sizes, 1)
    for sorted_sizes in (np.sort(sizes), np.sort(sizes)[::-1]):
        order = rng.permutation(n)
        expected = cut_row_by_row(order, sorted_sizes, max_tokens)
        got = cut_greedily(order, sorted_sizes, max_tokens)
        assert len(got) == len(expected) and all((a == b).all() for a, b in zip(got, expected))
    assert cut_greedily(np.zeros(0, np.int64), np.zeros(0, np.int64), 10) == []
    assert [b.tolist() for b in cut_greedily(np.arange(3), np.array([5, 5, 5]), 4)] == [[0], [1], [2]]


def lexsort_global_batches(sampler, epoch):
    """The sampler's epoch with its former sort (np.lexsort by padded size, source, target) and row-by-row cut."""
    from admin_ds.data.batching import _split_to_multiple

    rng = np.random.default_rng([sampler.seed, epoch])
    n = len(sampler.num_tokens)
    order = rng.permutation(n) if sampler.shuffle else np.arange(n)
    order = order[np.lexsort((sampler.tgt_sizes[order], sampler.src_sizes[order], sampler.num_tokens[order]))]
    batches = _split_to_multiple(cut_row_by_row(order, sampler.num_tokens[order], sampler.max_tokens),
                                 sampler.world_size, n)
    if sampler.shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@pytest.mark.parametrize("shuffle, world_size", [(True, 1), (True, 3), (False, 2)])
def test_sampler_batches_equal_the_lexsort_definition(shuffle, world_size):
    rng = np.random.default_rng(7)
    src, tgt = rng.integers(1, 40, 3000), rng.integers(1, 40, 3000)
    sampler = TokenBatchSampler(src, tgt, max_tokens=200, seed=5, world_size=world_size, shuffle=shuffle)
    for epoch in (1, 2):
        got, expected = sampler._global_batches(epoch), lexsort_global_batches(sampler, epoch)
        assert len(got) == len(expected) and all((a == b).all() for a, b in zip(got, expected))


def test_length_ranks_beyond_the_table_and_uint16():
    rng = np.random.default_rng(1)
    src = rng.integers(1, 5000, 80_000)
    tgt = rng.integers(1, 5000, 80_000)  # pair numbers up to 25M: np.unique path; > 65536 distinct: int64 ranks
    sampler = TokenBatchSampler(src, tgt, max_tokens=20_000, seed=2)
    assert sampler._length_ranks.dtype == np.int64
    got, expected = sampler._global_batches(3), lexsort_global_batches(sampler, 3)
    assert len(got) == len(expected) and all((a == b).all() for a, b in zip(got, expected))


def test_token_batches_longest_first_unchanged():
    lengths = [3, 9, 1, 9, 4, 0, 12]  # longest first, width = the first row: 12 | 9 9 | 4 3 1 0
    assert token_batches(lengths, 20) == [[6], [1, 3], [4, 0, 2, 5]]
