"""The one stock baseline: ``torch.nn.Transformer`` of our model's shape, trained the plain torch way (the GPU
check's stock rows; bench_model.py times its forward and backward against ours on a CPU).

Same work per step as ours: one embedding table shared by source, target and output (scaled by sqrt(D),
sinusoidal positions, dropout), the encoder with the source padding mask, the causal decoder with the
memory padding mask, the output projection tied to the table, label-smoothed cross-entropy summed over
non-pad targets and divided by their count, backward, and an optimizer step. The stock parts: post-LN
``nn.Transformer`` (its own init, its two final LayerNorms), ``torch.optim.AdamW(fused=True)`` with fp32
weights, ``torch.autocast`` to bf16 or fp16, and ``torch.amp.GradScaler`` for fp16. No DeepSpeed.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from admin_ds.data.batching import Batch
from admin_ds.model import ModelConfig
from admin_ds.model.embedding import sinusoidal_positions

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class StockTransformer(nn.Module):
    """``model(src [B, S], tgt_in [B, T]) -> logits [B, T, V]``; nn.Transformer plus our embedding/output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.pad_id = cfg.pad_id
        self.table = nn.Embedding(cfg.tgt_vocab_size, d, padding_idx=cfg.pad_id)
        nn.init.normal_(self.table.weight, std=d ** -0.5)
        self.scale = math.sqrt(d)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, d), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ...": inference-only fast path
            warnings.simplefilter("ignore")
            self.transformer = nn.Transformer(d, cfg.nhead, cfg.encoder_layers, cfg.decoder_layers, cfg.ffn_dim,
                                              cfg.dropout, batch_first=True)
        self.output_proj = nn.Linear(d, cfg.tgt_vocab_size, bias=False)
        self.output_proj.weight = self.table.weight

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.table(tokens) * self.scale + self.positions[: tokens.size(1)])

    def forward(self, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor) -> torch.Tensor:
        src_pad = src_tokens.eq(self.pad_id)  # [B, S] True = padding
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_tokens.size(1), device=tgt_tokens.device)
        out = self.transformer(self.embed(src_tokens), self.embed(tgt_tokens), tgt_mask=causal,
                               src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.output_proj(out)


class StockTrainer:
    """One optimizer step per batch, over ``micro_batches`` row slices of it (gradient accumulation, for a
    batch whose activations do not fit at once: the tokens per step stay the batch's)."""

    def __init__(self, cfg: ModelConfig, precision: str, device: torch.device, lr: float = 7e-4,
                 label_smoothing: float = 0.1, micro_batches: int = 1):
        with torch.device(device):
            self.model = StockTransformer(cfg).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-8,
                                           weight_decay=0.0, fused=True)
        self.dtype: Optional[torch.dtype] = DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.device, self.label_smoothing, self.micro_batches = device, label_smoothing, micro_batches
        self.vocab = cfg.tgt_vocab_size
        self.pad_id = cfg.pad_id

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def step(self, batch: Batch) -> torch.Tensor:
        """Train on ``batch``; returns the loss per target token (a device tensor: reading it would sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        rows = -(-len(batch) // self.micro_batches)
        for start in range(0, len(batch), rows):
            part = slice(start, start + rows)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(batch.src_tokens[part], batch.tgt_input[part])
                loss = F.cross_entropy(logits.reshape(-1, self.vocab), batch.tgt_output[part].reshape(-1),
                                       ignore_index=self.pad_id, label_smoothing=self.label_smoothing,
                                       reduction="sum") / batch.ntokens
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return total
