"""The batch sampler resumed on another number of ranks: within an epoch no pair is skipped or seen twice,
every rank gets as many batches as the others, and the max-tokens bound still holds."""

import numpy as np
import pytest

from admin_ds.data import TokenBatchSampler
from admin_ds.errors import UserError


def random_sizes(n=700, seed=11):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 40, n), rng.integers(1, 40, n)


SRC, TGT = random_sizes()
MAX_TOKENS = 300


def samplers(world_size: int, state=None) -> list[TokenBatchSampler]:
    ranks = [TokenBatchSampler(SRC, TGT, MAX_TOKENS, seed=4, rank=r, world_size=world_size) for r in range(world_size)]
    if state is not None:
        for sampler in ranks:
            sampler.load_state_dict(state)
    return ranks


def take_steps(ranks: list[TokenBatchSampler], steps, seen: list[int]) -> dict:
    """``steps`` batches from every rank in lockstep (None: to the end of the epoch); the pairs go to
    ``seen``; returns rank 0's state, as the trainer saves it."""
    streams = [iter(sampler) for sampler in ranks]
    epoch = ranks[0].epoch
    step = 0
    while steps is None or step < steps:
        if ranks[0].position >= len(ranks[0]):
            break
        batches = [next(stream) for stream in streams]
        assert len({sampler.position for sampler in ranks}) == 1, "ranks out of step"
        for batch in batches:
            assert len(batch) * (max(SRC[batch].max(), TGT[batch].max()) + 1) <= MAX_TOKENS
            seen.extend(batch)
        step += 1
    assert ranks[0].epoch == epoch
    return ranks[0].state_dict()


@pytest.mark.parametrize("first, second", [(7, 13), (0, 5), (7, 0), (1, 1)])
def test_two_one_two_ranks_see_every_pair_once_per_epoch(first, second):
    seen: list[int] = []
    state = take_steps(samplers(2), first, seen)
    state = take_steps(samplers(1, state), second, seen)
    last = samplers(2, state)
    take_steps(last, None, seen)
    assert sorted(seen) == list(range(len(SRC))), "a pair was skipped or seen twice"
    # The next epoch is an ordinary two-rank epoch, as if the world size had never changed.
    fresh = samplers(2)
    for sampler in fresh:
        sampler.set_epoch(2)
    for resumed, reference in zip(last, fresh):
        assert [list(b) for b in resumed] == [list(b) for b in reference]
        assert resumed.epoch == 3 and resumed.segments == [(0, 2)]


def test_three_ranks_after_two_and_a_resume_in_the_same_world_keeps_the_segments():
    seen: list[int] = []
    state = take_steps(samplers(2), 5, seen)
    state = take_steps(samplers(3, state), 4, seen)
    assert state["segments"] == [[0, 2], [10, 3]] and state["position"] == 4
    state = take_steps(samplers(3, state), 2, seen)  # an ordinary resume on 3 ranks: the same list goes on
    assert state["segments"] == [[0, 2], [10, 3]] and state["position"] == 6
    take_steps(samplers(1, state), None, seen)
    assert sorted(seen) == list(range(len(SRC)))


def test_resume_at_the_end_of_an_epoch_on_another_world_size_starts_the_next():
    seen: list[int] = []
    state = take_steps(samplers(2), None, seen)
    assert sorted(seen) == list(range(len(SRC)))
    (one,) = samplers(1, state)
    (reference,) = samplers(1)
    reference.set_epoch(2)
    assert [list(b) for b in one] == [list(b) for b in reference]


def test_a_checkpoint_without_segments_resumes_on_another_world_size():
    seen: list[int] = []
    state = take_steps(samplers(2), 6, seen)
    del state["segments"]  # written before segments existed: one segment, the saved world size
    take_steps(samplers(1, state), None, seen)
    assert sorted(seen) == list(range(len(SRC)))


def test_a_remainder_too_small_for_the_new_world_size_is_refused_in_one_line():
    sizes = [5, 5, 5]
    tiny = TokenBatchSampler(sizes, sizes, 12, seed=0, world_size=1)  # batches of 2 pairs and 1 pair
    stream = iter(tiny)
    next(stream)
    state = tiny.state_dict()  # 1 or 2 pairs left: too few for a batch on each of 3 ranks
    with pytest.raises(UserError, match="cannot resume epoch 1 on 3 ranks.*resume on 1 ranks until the epoch ends"):
        TokenBatchSampler(sizes, sizes, 12, seed=0, rank=0, world_size=3).load_state_dict(state)
