"""The encoder-decoder translation model.

Shape legend: B batch, S source time, T target time, D d_model, V vocabulary.
Token tensors are LongTensors right-padded with ``pad_id``; target inputs start with BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from admin_ds.errors import UserError
from admin_ds.model.cache import DecoderCache
from admin_ds.model.config import ModelConfig
from admin_ds.model.criterion import label_smoothed_loss
from admin_ds.model.dropout import mask_tape_contexts
from admin_ds.model.embedding import Embedding, make_table
from admin_ds.model.init import Linear
from admin_ds.model.layers import DecoderLayer, EncoderLayer
from admin_ds.model.residual import LayerNorm, Residual, scheme_coefficients


@dataclass
class EncoderOut:
    """memory [B, S, D] and padding_mask [B, S] (True = padding).

    ``has_padding`` is decided once, in ``encode``: asking ``padding_mask.any()`` is a host sync, and the
    encoder, the decoder and the decoding cache all need the answer. Selecting rows (beam search) keeps
    it valid: it may then say True for rows that have no padding, which only costs the mask.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    has_padding: bool = True

    @property
    def attention_mask(self) -> Optional[torch.Tensor]:
        """padding_mask, or None when nothing is padded (so SDPA can take its unmasked kernels)."""
        return self.padding_mask if self.has_padding else None


def run_layers(layers: Sequence[nn.Module], x: torch.Tensor, call: Callable, checkpoint_every: int) -> torch.Tensor:
    """Apply ``call(layer, x)`` for each layer; with ``checkpoint_every`` = k > 0 (and gradients on), keep
    only every k-th layer's input and recompute the k layers in between during backward.

    Non-reentrant checkpointing: the reentrant kind drops gradients when no input requires grad
    (docs/deepspeed.md), and it restores the RNG state so recomputation matches; on CPU the dropout
    masks of the forward are replayed instead of drawn again (dropout.mask_tape_contexts).
    """
    if checkpoint_every <= 0 or not torch.is_grad_enabled():
        for layer in layers:
            x = call(layer, x)
        return x

    def segment(start: int, inputs: torch.Tensor) -> torch.Tensor:
        for layer in layers[start: start + checkpoint_every]:
            inputs = call(layer, inputs)
        return inputs

    for start in range(0, len(layers), checkpoint_every):
        x = checkpoint(segment, start, x, use_reentrant=False, context_fn=mask_tape_contexts)
    return x


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        alpha, gain = scheme_coefficients(cfg.residual, cfg.encoder_layers, cfg.decoder_layers, "encoder")
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.nhead, cfg.ffn_dim, cfg.residual, alpha, gain, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout, cfg.layer_norm_eps)
            for _ in range(cfg.encoder_layers))
        # Pre-LN leaves the stream un-normalised after the last layer.
        self.norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.residual == "pre-ln" else None
        self.checkpoint_every = cfg.checkpoint_every

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, S, D] embedded source, padding_mask [B, S] or None (no padding) -> [B, S, D]."""
        x = run_layers(self.layers, x, lambda layer, h: layer(h, padding_mask), self.checkpoint_every)
        return self.norm(x) if self.norm is not None else x


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        alpha, gain = scheme_coefficients(cfg.residual, cfg.encoder_layers, cfg.decoder_layers, "decoder")
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.nhead, cfg.ffn_dim, cfg.residual, alpha, gain, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout, cfg.layer_norm_eps)
            for _ in range(cfg.decoder_layers))
        self.norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.residual == "pre-ln" else None
        self.checkpoint_every = cfg.checkpoint_every

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_padding_mask: Optional[torch.Tensor],
                cache: Optional[DecoderCache] = None) -> torch.Tensor:
        """x [B, T, D] embedded target (only the new positions when ``cache`` is given) -> [B, T, D]."""
        if cache is not None:
            for i, layer in enumerate(self.layers):
                x = layer(x, memory, memory_padding_mask, cache.self_attn[i], cache.cross_attn[i])
        else:
            x = run_layers(self.layers, x, lambda layer, h: layer(h, memory, memory_padding_mask),
                           self.checkpoint_every)
        return self.norm(x) if self.norm is not None else x


class TranslationModel(nn.Module):
    """Encoder-decoder Transformer with a selectable residual scheme (admin | post-ln | pre-ln | deepnorm).

    ``model(src_tokens [B, S], tgt_tokens [B, T]) -> logits [B, T, V]``.
    ``encode`` / ``decode`` / ``new_cache`` expose the two halves for incremental generation.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        src_table = make_table(cfg.src_vocab_size, cfg.d_model, cfg.pad_id)
        tgt_table = src_table if cfg.share_all_embeddings else make_table(cfg.tgt_vocab_size, cfg.d_model, cfg.pad_id)
        self.src_embed = Embedding(src_table, cfg.max_positions, cfg.dropout)
        self.tgt_embed = Embedding(tgt_table, cfg.max_positions, cfg.dropout)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.output_proj = Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False, init_std=cfg.d_model ** -0.5)
        if cfg.share_decoder_input_output_embed or cfg.share_all_embeddings:
            self.output_proj.weight = tgt_table.weight

    # --- Admin -------------------------------------------------------------------------------------
    def residuals(self, stack: str) -> list[Residual]:
        """The residual connections of "encoder" or "decoder" in Admin's sublayer order."""
        layers = self.encoder.layers if stack == "encoder" else self.decoder.layers
        return [residual for layer in layers for residual in layer.residuals()]

    # --- forward -----------------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, name: str) -> None:
        """Type, rank and length only: these read shapes, not values. Checking the ids' range here would cost
        host syncs on every forward; ids are checked where they enter (prepare, collate, translate)."""
        if tokens.dtype != torch.long:
            raise UserError(f"{name} must be a LongTensor of token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise UserError(f"{name} must be [batch, time], got shape {tuple(tokens.shape)}")
        if tokens.size(1) > self.cfg.max_positions:
            raise UserError(f"{name} has {tokens.size(1)} positions, more than max_positions "
                            f"{self.cfg.max_positions}")

    def encode(self, src_tokens: torch.Tensor, src_padded: Optional[bool] = None) -> EncoderOut:
        """src_tokens [B, S] -> EncoderOut(memory [B, S, D], padding_mask [B, S]).

        ``src_padded``: whether any row is padded, where the caller knows it on the host (training batches
        do, from their lengths); None asks the device, which waits for it (a host sync).
        """
        self._check_tokens(src_tokens, "src_tokens")
        padding_mask = src_tokens.eq(self.cfg.pad_id)
        has_padding = bool(padding_mask.any()) if src_padded is None else src_padded
        memory = self.encoder(self.src_embed(src_tokens), padding_mask if has_padding else None)
        return EncoderOut(memory, padding_mask, has_padding)

    def decode_features(self, tgt_tokens: torch.Tensor, encoder_out: EncoderOut,
                        cache: Optional[DecoderCache] = None) -> torch.Tensor:
        """tgt_tokens [B, T] -> final decoder states [B, T, D] (before the output projection).

        With ``cache``, ``tgt_tokens`` holds only the positions after ``cache.steps`` and the cache advances.
        """
        self._check_tokens(tgt_tokens, "tgt_tokens")
        offset = cache.steps if cache is not None else 0
        if offset + tgt_tokens.size(1) > self.cfg.max_positions:
            raise UserError(f"decoding past max_positions {self.cfg.max_positions}")
        mask = cache.memory_padding_mask if cache is not None else encoder_out.attention_mask
        x = self.decoder(self.tgt_embed(tgt_tokens, offset), encoder_out.memory, mask, cache)
        if cache is not None:
            cache.steps += tgt_tokens.size(1)
        return x

    def decode(self, tgt_tokens: torch.Tensor, encoder_out: EncoderOut,
               cache: Optional[DecoderCache] = None) -> torch.Tensor:
        """tgt_tokens [B, T] -> logits [B, T, V]."""
        return self.output_proj(self.decode_features(tgt_tokens, encoder_out, cache))

    def new_cache(self, encoder_out: EncoderOut) -> DecoderCache:
        """An empty incremental-decoding cache for this batch; see DecoderCache.reorder for beam search."""
        return DecoderCache.empty(len(self.decoder.layers), encoder_out.attention_mask)

    def forward(self, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor, target: Optional[torch.Tensor] = None,
                label_smoothing: float = 0.0, src_padded: Optional[bool] = None):
        """src_tokens [B, S], tgt_tokens [B, T] (BOS first) -> logits [B, T, V].

        With ``target`` [B, T] (the next tokens, pad where none) it returns (loss_sum, nll_sum) instead:
        the training step goes through one forward call, which is what DeepSpeed's engine wraps. The loss
        is fused with the output projection (criterion.py): no [B, T, V] logits are kept for backward.
        ``src_padded`` as in ``encode``.
        """
        if src_tokens.size(0) != tgt_tokens.size(0):
            raise UserError(f"the batch sizes of src_tokens ({src_tokens.size(0)}) and tgt_tokens "
                            f"({tgt_tokens.size(0)}) must be equal")
        features = self.decode_features(tgt_tokens, self.encode(src_tokens, src_padded))
        if target is None:
            return self.output_proj(features)
        return label_smoothed_loss(features, self.output_proj, target, label_smoothing, self.cfg.pad_id)
