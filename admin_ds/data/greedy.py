"""Greedy cutting of rows sorted by padded size into the fewest batches under a token bound.

The one rule behind every batch admin-ds builds (``data/batching.py``: training's TokenBatchSampler and
decoding's ``token_batches``), computed per run of equal sizes so that it scales to tens of millions of rows.
"""

from __future__ import annotations

import numpy as np


def cut_greedily(order: np.ndarray, sorted_sizes: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Cut ``order`` (sorted by padded size, either way) into the fewest consecutive batches whose
    rows times their longest row stay within ``max_tokens``; a row longer than that stands alone.

    The greedy rule, row by row: a batch takes the next row unless (rows + 1) * longest row would exceed
    ``max_tokens``. Computed per run of equal sizes instead of per row (a corpus of 40M pairs has at most
    a few hundred distinct sizes; a Python loop over its rows takes ~6 s): inside a run every batch
    holds ``max_tokens // size`` rows, and only a batch that crosses into the next runs needs a look.
    """
    sizes = np.asarray(sorted_sizes, dtype=np.int64)
    if not len(sizes):
        return []
    run_starts = np.flatnonzero(np.concatenate(([True], sizes[1:] != sizes[:-1])))
    run_ends = np.append(run_starts[1:], len(sizes))
    run_sizes = sizes[run_starts]
    # Rows a batch may hold when its longest row has the run's size; size 0 never cuts, too long stands alone.
    capacity = np.where(run_sizes > 0, np.maximum(max_tokens // np.maximum(run_sizes, 1), 1), len(sizes))
    runs = (run_starts, run_ends, capacity)
    ends = _batch_ends_ascending(*runs) if sizes[0] <= sizes[-1] else _batch_ends_descending(*runs)
    return np.split(order, ends[:-1])


def _batch_ends_ascending(run_starts: np.ndarray, run_ends: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Exclusive batch ends [num_batches] when sizes grow: a batch's longest row is its newest one, so a
    batch that starts at p may reach into a later run m only while p + capacity[m] > run_starts[m]."""
    ends, start, run = [], 0, 0
    total = int(run_ends[-1])
    while start < total:
        run_end, rows = int(run_ends[run]), int(capacity[run])
        full = (run_end - start) // rows  # batches that fit inside this run
        if full:
            ends.append(start + rows * np.arange(1, full + 1, dtype=np.int64))
            start += full * rows
        if start < run_end:  # the rest of the run starts a batch that may take rows of later runs
            end, later = run_end, run + 1
            while later < len(run_starts) and start + int(capacity[later]) > run_starts[later]:
                end = min(int(run_ends[later]), start + int(capacity[later]))
                if end < run_ends[later]:
                    break
                later += 1
            ends.append(np.array([end], dtype=np.int64))
            start = end
        run = int(np.searchsorted(run_ends, start, side="right"))
    return np.concatenate(ends)


def _batch_ends_descending(run_starts: np.ndarray, run_ends: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Exclusive batch ends [num_batches] when sizes shrink: a batch's longest row is its first one, so a
    batch starting in a run holds that run's capacity of rows, wherever they come from."""
    ends, start = [], 0
    total = int(run_ends[-1])
    while start < total:
        run = int(np.searchsorted(run_ends, start, side="right"))
        starts = np.arange(start, int(run_ends[run]), int(capacity[run]), dtype=np.int64)
        ends.append(np.minimum(starts + int(capacity[run]), total))
        start = int(ends[-1][-1])
    return np.concatenate(ends)
