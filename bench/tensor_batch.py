"""A ``Batch`` (admin_ds.data) from ready tensors, for the benchmarks that time the product's training step
(``admin_ds.training.engine.train_step``) on random tokens: the token count and ``src_padded`` are taken
from the tensors once, on the host side of the benchmark, as collate knows them from the lengths."""

from __future__ import annotations

import torch

from admin_ds.data import Batch


def tensor_batch(src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, pad_id: int = 0) -> Batch:
    """src [N, S], tgt_in [N, T], tgt_out [N, T] (right-padded with ``pad_id``) as a Batch."""
    return Batch(src_tokens=src, tgt_input=tgt_in, tgt_output=tgt_out, ntokens=int(tgt_out.ne(pad_id).sum()),
                 ids=torch.arange(src.size(0)), src_padded=bool(src.eq(pad_id).any()))
