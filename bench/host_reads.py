"""Find the host reads of device values (host syncs) that a piece of training code performs.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``,
``.tolist()``, ``.numpy()``, and ops whose output size depends on values, such as ``nonzero``) makes the
CPU wait until every queued kernel has run; the GPU then idles while the CPU queues the next ones. A step
with such a read in its middle cannot run ahead of the GPU. ``torch.cuda.set_sync_debug_mode`` reports
them on a GPU; this module finds the same reads on a CPU, where the tests run, by watching the ops torch
dispatches, and names the first caller outside torch of each, so a report says whose read it is.

    with HostReadSpy() as spy:
        step()
    spy.sites  # Counter {"admin_ds/model/transformer.py:154 encode": 2, ...}
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that hand a value to the host (_local_scalar_dense is what item/float/int/bool end in) or whose
# output shape depends on the values, which the host must learn before it can allocate the output.
HOST_READ_OPS = frozenset({"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "unique",
                           "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave", "_assert_async"})
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS_FILE = str(Path(__file__).resolve())
_WRAPPERS = ("_compile.py", "_python_dispatch.py", "eval_frame.py")


def call_site(stack: list[traceback.FrameSummary]) -> str:
    """'path:line function' of the innermost frame that is not torch's (nor this module's), and, when the
    read itself happens inside torch, the torch function that makes it: 'deepspeed/...:2983 _optimizer_step
    > torch/optim/optimizer.py:95 _get_value'. Paths are shortened to what follows site-packages/ or the
    repository root."""
    inner = ""
    for frame in reversed(stack):
        path = str(Path(frame.filename).resolve())
        if path == _THIS_FILE:
            continue
        if path.startswith(_TORCH_DIR):
            if not path.endswith(_WRAPPERS):  # dispatch and compiler wrappers, not where the read happens
                inner = inner or f" > {_short(path)}:{frame.lineno} {frame.name}"
            continue
        return f"{_short(path)}:{frame.lineno} {frame.name}{inner}"
    return f"torch{inner}"


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    for marker in ("/admin_ds/", "/bench/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


class HostReadSpy(TorchDispatchMode):
    """Counts host reads by call site while active. ``tolist`` and ``numpy`` bypass the dispatcher on CPU
    tensors, so they are wrapped for the spy's lifetime."""

    def __init__(self):
        super().__init__()
        self.sites: Counter[str] = Counter()
        self._wrapped: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.split("::")[-1] in HOST_READ_OPS:
            self.sites[call_site(traceback.extract_stack())] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._wrapped[name] = original
            setattr(torch.Tensor, name, self._recording(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._wrapped.items():
            setattr(torch.Tensor, name, original)
        self._wrapped.clear()
        return super().__exit__(*exc)

    def _recording(self, original):
        def method(tensor, *args, **kwargs):
            self.sites[call_site(traceback.extract_stack())] += 1
            return original(tensor, *args, **kwargs)

        return method

    def by_owner(self) -> dict[str, int]:
        """Reads per owner: 'admin_ds', 'deepspeed', or the first path component of anything else."""
        owners: Counter[str] = Counter()
        for site, count in self.sites.items():
            owners[site.split("/", 1)[0].split(":", 1)[0]] += count
        return dict(owners)

