"""How many parameters a config has, and how many bytes one training micro-batch keeps for backward.

Pure arithmetic on a ``ModelConfig``: nothing is built. ``admin_ds.training.plan`` adds the ZeRO model
states; docs/plan.md has every formula with the tensor each term stands for, and tests/test_plan.py checks
the counts against built models and the activation figure against measured CPU peaks.

Shape legend: S source tokens and T target tokens of one micro-batch (padding included), D d_model,
F ffn_dim, H heads, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from admin_ds.model.config import ModelConfig
from admin_ds.model.criterion import default_chunk_tokens

ACTIVATION_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
TOKEN_ID_BYTES = 8  # int64 ids, kept by each embedding lookup
NORM_STATS_BYTES = 8  # LayerNorm's fp32 mean and 1/std per token
CPU_RNG_STATE_BYTES = 5056  # torch.get_rng_state() of the CPU generator, kept per replayed dropout mask


@dataclass(frozen=True)
class ParameterCount:
    """total: distinct parameters (tied tables once); largest_layer: the most any one module owns directly
    (DeepSpeed's ``largest_layer_params``: ZeRO-3 gathers one such module at a time)."""

    total: int
    largest_layer: int


def _attention_params(d: int) -> int:
    return 4 * d * d + 4 * d  # packed q/k/v (or q + packed k/v) and the output projection, with biases


def _residual_params(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model + (cfg.d_model if cfg.residual == "admin" else 0)  # LayerNorm (+ ω)


def _ffn_params(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model * cfg.ffn_dim + cfg.ffn_dim + cfg.d_model


def parameter_count(cfg: ModelConfig) -> ParameterCount:
    d = cfg.d_model
    encoder_layer = _attention_params(d) + _ffn_params(cfg) + 2 * _residual_params(cfg)
    decoder_layer = 2 * _attention_params(d) + _ffn_params(cfg) + 3 * _residual_params(cfg)
    final_norms = 2 * 2 * d if cfg.residual == "pre-ln" else 0
    tables = [cfg.src_vocab_size * d]
    if not cfg.share_all_embeddings:
        tables.append(cfg.tgt_vocab_size * d)
        if not cfg.share_decoder_input_output_embed:
            tables.append(cfg.tgt_vocab_size * d)  # an output projection of its own (no bias)
    total = cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + final_norms + sum(tables)
    modules = tables + [3 * d * d + 3 * d, d * cfg.ffn_dim + cfg.ffn_dim, cfg.ffn_dim * d + d]
    return ParameterCount(total, max(modules))


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes of one micro-batch's forward + backward on one rank.

    saved: what autograd keeps from the forward until backward reaches it (at the end of the forward, all
    of it at once). loss: the fused loss's fp32 gradients, computed in the forward and kept until backward.
    peak: the most that is alive at one time above the model states: the larger of the loss forward (saved
    + loss + one chunk's logits) and the recomputation of one checkpointed segment in backward.
    """

    saved: int
    loss: int
    peak: int


def _per_token(cfg: ModelConfig, precision: str) -> dict:
    """Bytes per token of the tensors each part keeps for backward (docs/plan.md, "Activations")."""
    a, d, f, h = ACTIVATION_BYTES[precision], cfg.d_model, cfg.ffn_dim, cfg.nhead
    norm_input = 4 * d if precision == "fp16" else a * d  # fp16 LayerNorm normalises an fp32 copy
    mask = d if cfg.dropout > 0 else 0  # boolean dropout mask of a residual branch
    sublayer = a * d + norm_input + NORM_STATS_BYTES + mask  # branch input, LayerNorm input and stats, mask
    attention = 4 * h  # SDPA's fp32 log-sum-exp per head
    self_attention = 3 * a * d + a * d + attention  # packed q/k/v, SDPA output
    ffn = a * f + ((f + a * f) if cfg.activation_dropout > 0 else 0)  # ReLU output (+ mask, dropped copy)
    return {
        "encoder_layer": 2 * sublayer + self_attention + ffn,
        "decoder_layer": 3 * sublayer + self_attention + (2 * a * d + attention) + ffn,  # + cross q, output
        "cross_kv": 2 * a * d,  # per source token and decoder layer: the projected keys and values
        "memory": a * d,  # the encoder output, read by every cross-attention
        "embedding": TOKEN_ID_BYTES + mask,
        "final_norm": (norm_input + NORM_STATS_BYTES) if cfg.residual == "pre-ln" else 0,
        "segment_input": a * d,
        "mask": mask,
        # Gradients alive at once while backward runs one layer's widest step: in the FFN the stream's
        # gradient and a few [tokens, D] ones beside one [tokens, F] gradient of the ReLU; in attention (wider
        # where F < 2D) about five [tokens, D] ones. Measured (tests/test_plan.py): since the ReLU runs out of
        # place, backward no longer rebuilds fc1's output (CopySlices kept about two more [tokens, F]).
        "layer_backward": a * max(f + 3 * d, 5 * d),
    }


def loss_chunk_tokens(cfg: ModelConfig, tokens: int, device: str) -> int:
    """Target tokens per chunk of the fused loss (criterion.label_smoothed_loss's default)."""
    return min(tokens, default_chunk_tokens(cfg.tgt_vocab_size, device))


def activation_bytes(cfg: ModelConfig, max_tokens: int, precision: str = "fp16", device: str = "cuda",
                     source_tokens: int | None = None) -> ActivationBytes:
    """Bytes one micro-batch of ``max_tokens`` target (and, unless given, as many source) tokens keeps.

    ``max_tokens`` bounds rows x longest row of a batch, so S = T = max_tokens is its largest case.
    ``device`` "cpu" adds what only the CPU path keeps: under checkpointing the replayed dropout masks
    (model/dropout.py), and the smaller loss chunks.
    """
    s, t = (max_tokens if source_tokens is None else source_tokens), max_tokens
    n_enc, n_dec, k = cfg.encoder_layers, cfg.decoder_layers, cfg.checkpoint_every
    per = _per_token(cfg, precision)
    outside = (s + t) * per["embedding"] + s * per["memory"] + (s + t) * per["final_norm"]
    encoder_layer = s * per["encoder_layer"]
    decoder_layer = t * per["decoder_layer"] + s * per["cross_kv"]
    loss = 4 * t * cfg.d_model + 4 * cfg.tgt_vocab_size * cfg.d_model  # fp32 d/d features, d/d weight
    chunk = loss_chunk_tokens(cfg, t, device)
    loss_logits = 8 * chunk * cfg.tgt_vocab_size  # one chunk's fp32 logits and log-probabilities
    backward = t * per["layer_backward"] + ACTIVATION_BYTES[precision] * cfg.d_model * cfg.ffn_dim
    if k <= 0:
        saved = outside + n_enc * encoder_layer + n_dec * decoder_layer
        return ActivationBytes(saved, loss, saved + loss + max(loss_logits, loss, backward))
    kept = per["segment_input"] * (s * math.ceil(n_enc / k) + t * math.ceil(n_dec / k))
    if device == "cpu" and per["mask"]:
        kept += per["mask"] * (2 * s * n_enc + 3 * t * n_dec)
        kept += CPU_RNG_STATE_BYTES * (2 * n_enc + 3 * n_dec)
    saved = outside + kept
    recomputed = max(min(k, n_enc) * encoder_layer, min(k, n_dec) * decoder_layer)
    return ActivationBytes(saved, loss, saved + loss + max(loss_logits, loss, recomputed + backward))
