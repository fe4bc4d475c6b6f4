"""Model FLOPs of one training update: the one count that training's log rows, ``admin-ds plan`` and the
benchmarks (bench/) all use for FLOP/s and MFU.

Counts matrix products only, 2 FLOPs per multiply-add, and a training update as 3x the forward (the backward
computes two products per forward product: the input's gradient and the weight's). Embedding lookups,
LayerNorm, softmax, dropout and the optimizer are left out, and so is activation checkpointing's second
forward: it is recomputation, not model work, as is usual for MFU. Pure arithmetic on a ``ModelConfig``.

Per forward, with d = d_model, f = ffn_dim, V the target vocabulary, and a sentence pair of s source and
t target positions (source ids + EOS; BOS + target ids):

    encoder layer, per source position:  2 (4 d^2 + 2 d f)          q/k/v/out projections, FFN
                   per sentence:         4 s^2 d                    scores [s, s] and their weighted sum
    decoder layer, per target position:  2 (4 d^2 + 2 d^2 + 2 d f)  self q/k/v/out, cross q/out, FFN
                   per sentence:         2 t^2 d + 4 s t d          causal self-attention (half the square),
                                                                    cross-attention [t, s]
                   per source position:  4 d^2                      the memory's cross keys and values
    output projection, per target position: 2 d V

The time-squared terms are summed sentence by sentence, so ``batch_training_flops`` is exact for the model,
not an approximation: padding is work the hardware does but the model does not need, and is not counted.
``training_flops`` counts a padded [batch, src_len] x [batch, tgt_len] batch as if every position were a
sentence's own (every row full): it is the same count for equal rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from admin_ds.model.config import ModelConfig


def _update_flops(cfg: ModelConfig, src: int, tgt: int, src_sq: int, tgt_sq: int, src_tgt: int) -> float:
    """3x the forward FLOPs of a batch given its sums over sentences: ``src`` = sum of s, ``tgt`` = sum of t,
    ``src_sq`` = sum of s^2, ``tgt_sq`` = sum of t^2, ``src_tgt`` = sum of s t."""
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.tgt_vocab_size
    encoder_layer = 2 * (4 * d * d + 2 * d * f) * src + 4 * d * src_sq
    decoder_layer = 2 * (6 * d * d + 2 * d * f) * tgt + 2 * d * tgt_sq + 4 * d * src_tgt + 4 * d * d * src
    forward = cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + 2 * d * v * tgt
    return 3.0 * forward


def training_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> float:
    """Model FLOPs of an update on ``batch`` rows of ``src_len`` source and ``tgt_len`` target positions each."""
    return _update_flops(cfg, batch * src_len, batch * tgt_len, batch * src_len ** 2, batch * tgt_len ** 2,
                         batch * src_len * tgt_len)


def batch_training_flops(cfg: ModelConfig, src_lengths: Sequence[int], tgt_lengths: Sequence[int]) -> float:
    """Model FLOPs of an update on one batch, sentence by sentence: ``src_lengths`` [batch] source positions
    (ids + EOS) and ``tgt_lengths`` [batch] target positions (BOS + ids) of each row, padding excluded.
    Rows of equal lengths give ``training_flops``."""
    s = np.asarray(src_lengths, dtype=np.int64)
    t = np.asarray(tgt_lengths, dtype=np.int64)
    return _update_flops(cfg, int(s.sum()), int(t.sum()), int(s @ s), int(t @ t), int(s @ t))
