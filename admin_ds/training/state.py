"""The random streams a resumed run must continue: Python's, numpy's, torch's (CPU and CUDA) generators.

A state is written as tensors and numbers only, so that it loads with torch's weights-only unpickler
(checkpoints/pickles.py): Python's Mersenne Twister as its 625 words, numpy's as its 624 keys and position.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from admin_ds.checkpoints.pickles import torch_load
from admin_ds.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python_version": version, "python_words": torch.tensor(words, dtype=torch.int64),
             "python_gauss": gauss, "numpy_kind": kind, "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_cached_gaussian": float(cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    try:
        python = (state["python_version"], tuple(int(w) for w in state["python_words"].tolist()),
                  state["python_gauss"])
        numpy = (state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                 state["numpy_has_gauss"], state["numpy_cached_gaussian"])
        torch_state = state["torch"]
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"not an admin-ds RNG state (missing or malformed {err})") from None
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def restore_rng_file(rng_file: Path) -> None:
    """Continue the streams a checkpoint's ``rng_state_rankR.pt`` holds (read weights-only)."""
    try:
        set_rng_state(torch_load(rng_file, mmap=False))
    except UserError as err:
        raise UserError(f"{rng_file}: {err}") from None
