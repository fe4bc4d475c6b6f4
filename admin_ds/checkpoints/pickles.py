"""The one way admin-ds unpickles a file: torch's weights-only loader, never arbitrary globals.

A ``.pt`` file is a pickle, and a pickle can name any Python callable to run while loading
(``os.system`` among them). ``torch.load(weights_only=True)`` rebuilds only tensors, numbers, strings and
containers, and refuses any other global unless it is allowed by name. The files admin-ds reads hold
nothing else, except DeepSpeed's optimizer shards, which carry the four small DeepSpeed objects named in
``DEEPSPEED_GLOBALS``. Here (convert, average-checkpoints, translate) those are rebuilt as inert records
whose fields nobody reads: checkpoints/ does not import deepspeed. The training engine resumes through
DeepSpeed's own loaders, during which ``torch.load`` is this loader with the real classes allowed by the
same names (``training/engine/internals.py``, ``deepspeed_loads_weights_only``).
RNG states are written as tensors and numbers for the same reason (``training/state.py``).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from admin_ds.errors import UserError, first_line

# Exactly what DeepSpeed 0.19 puts in a ZeRO-1/2/3 optimizer shard (fp32, bf16 and fp16), beyond tensors.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

Allowed = list[Union[Callable, tuple[Callable, str]]]


class DeepSpeedRecord:
    """An inert stand-in for one DeepSpeed object of a checkpoint: it keeps what the pickle gave it."""

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __int__(self) -> int:  # a ZeroStageEnum is pickled as a call with its value
        return int(self.args[0])


def _records() -> Allowed:
    return [(type(name.rsplit(".", 1)[1], (DeepSpeedRecord,), {}), name) for name in DEEPSPEED_GLOBALS]


_RECORDS = _records()
_TORCH_LOAD = torch.load  # the real one, also while a DeepSpeed load stands this loader in for it
_UNSUPPORTED = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


def load_weights_only(file: Union[str, Path], allowed: Optional[Allowed] = None, map_location: Any = "cpu",
                      mmap: bool = False) -> Any:
    """``torch.load`` of ``file`` with ``weights_only=True``, allowing ``allowed`` (by default DeepSpeed's
    objects as inert records). A file that names any other global is refused with a ``UserError``; nothing
    in it runs."""
    try:
        with torch.serialization.safe_globals(_RECORDS if allowed is None else allowed):
            return _TORCH_LOAD(file, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED.search(str(err))
        what = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
        raise UserError(f"refusing to load {file}: it holds {what}, which admin-ds never unpickles "
                        "(a crafted or foreign file?)") from None


def torch_load(file: Path, mmap: bool = True) -> Any:
    """A checkpoint file for reading here: weights-only, memory-mapped (only what is read becomes resident),
    any failure one line."""
    try:
        return load_weights_only(file, mmap=mmap)
    except UserError:
        raise
    except Exception as err:  # truncated archives, files that are no torch archive, ...
        if mmap and "mmap" in str(err):  # torch.save's legacy (non-zip) format cannot be memory-mapped
            return torch_load(file, mmap=False)
        raise UserError(f"cannot read {file} ({first_line(err)})") from None


def check_weights_only(directory: Path, pattern: str = "*.pt") -> None:
    """Refuse (``UserError``) a checkpoint folder any of whose ``.pt`` files (``pattern``; ``"**/*.pt"``:
    also in its subfolders, as in a universal checkpoint) needs more than tensors.

    Every rank runs it on every file before a resume: all ranks then fail together, on the same file,
    instead of one rank stopping while the others wait for it in a collective. Memory-mapped, it reads
    the pickles, not the tensors' data."""
    for file in sorted(directory.glob(pattern)):
        torch_load(file)
