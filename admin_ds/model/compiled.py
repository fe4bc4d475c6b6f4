"""Per-layer ``torch.compile`` (``admin-ds train --compile-layers``, docs/speed.md).

Each encoder and decoder layer is compiled in place with ``nn.Module.compile``: the module tree, the
parameter names and so ``state_dict`` keys and DeepSpeed checkpoints stay what they are; only the layer's
call goes through dynamo. All layers of a class run the same ``forward`` code and dynamo (which inlines
built-in nn.Module calls and treats parameters as inputs) reuses one graph for all of them: a 60-layer
encoder compiles as often as a 2-layer one. The embeddings, the loss and the layer loop (with its activation
checkpointing) stay eager.

A layer forward has no graph break at training time (dropout on, padding and causal masks, SDPA): the CPU
dropout takes ``F.dropout`` while compiling (model/dropout.py). The graphs have dynamic shapes; new ones
still come where dynamo must specialise: padding mask present or not, training or eval, gradients on or
off, a batch of one row.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from admin_ds.errors import UserError
from admin_ds.model.transformer import TranslationModel


def compiled_layers(model: TranslationModel) -> list[nn.Module]:
    """The encoder layers then the decoder layers: what ``compile_layers`` compiles."""
    return [*model.encoder.layers, *model.decoder.layers]


def compile_unavailable(device: torch.device) -> Optional[str]:
    """Why inductor cannot compile for ``device`` on this machine, or None. Asked before compiling: otherwise
    the first forward fails deep inside inductor."""
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as err:  # inductor's InvalidCxxCompiler, or whatever its search raises
            return f"inductor on CPU needs a C++ compiler (g++, or $CXX): {str(err).splitlines()[0]}"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor on CUDA needs triton, which this torch installation lacks"
    return None


def compile_layers(model: TranslationModel, mode: Optional[str] = None, dynamic: Optional[bool] = True,
                   backend: str = "inductor") -> int:
    """Compile every encoder and decoder layer of ``model`` in place; returns how many were compiled.

    A UserError when inductor cannot compile here (no C++ compiler on CPU, no triton on CUDA; other backends
    are not asked). Compile after the Admin ω profiling: a layer compiled while ``Residual.profiler`` is set
    would trace the profiling branch. ``mode``, ``dynamic`` and ``backend`` go to ``torch.compile``. ``dynamic=True``
    compiles shape-generic graphs from the first batch on: token batches change shape every step, and
    torch's default (static first, dynamic at the first new shape) compiles every graph twice. Compiling
    is lazy: the first forward of each layer class pays the compile time.
    """
    reason = compile_unavailable(next(model.parameters()).device) if backend == "inductor" else None
    if reason is not None:
        raise UserError(f"cannot compile the layers (--compile-layers): {reason}")
    layers = compiled_layers(model)
    profiling = [r for layer in layers for r in layer.residuals() if r.profiler is not None]
    if profiling:
        raise RuntimeError("compile_layers: ω profiling is running (Residual.profiler is set); compile after it")
    for layer in layers:
        layer.compile(mode=mode, dynamic=dynamic, backend=backend)
    return len(layers)
