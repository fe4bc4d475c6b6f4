"""Model FLOPs of one training step (forward + backward = 3x forward matmul FLOPs), for MFU figures.

Counts matrix products only (2 FLOPs per multiply-add); activation checkpointing's recomputation is not
model work and is not counted, as is usual for MFU. Per forward, with d = d_model, f = ffn_dim, V the
target vocabulary, and a row of s source and t target positions:

    encoder layer, per source token:   2 (4 d^2 + 2 d f)                  q/k/v/out projections, FFN
                   per row:            4 s^2 d                            scores + weighted sum
    decoder layer, per target token:   2 (4 d^2 + 2 d^2 + 2 d f)          self q/k/v/out, cross q/out, FFN
                   per row:            2 t^2 d + 4 s t d                  causal self-attention (half), cross
                   per source token:   4 d^2                              the memory's keys and values
    output projection, per target token: 2 d V

``training_flops`` counts a padded [batch, src_len] x [batch, tgt_len] batch as if every position were a
token; ``batch_training_flops`` counts only each row's own (non-pad) positions, the work that trains.
"""

from collections.abc import Sequence

import numpy as np

from admin_ds.model import ModelConfig


def training_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> float:
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.tgt_vocab_size
    src_tokens, tgt_tokens = batch * src_len, batch * tgt_len
    encoder_per_token = 2 * (4 * d * d + 2 * d * f) + 4 * src_len * d          # projections, FFN, attention
    decoder_per_token = (2 * (4 * d * d + 2 * d * d + 2 * d * f)              # self qkv/out, cross q/out, FFN
                         + 2 * tgt_len * d                                    # causal self-attention (half)
                         + 4 * src_len * d)                                   # cross-attention
    cross_kv_per_src_token = 2 * 2 * d * d                                    # keys/values of the memory
    forward = (cfg.encoder_layers * encoder_per_token * src_tokens
               + cfg.decoder_layers * (decoder_per_token * tgt_tokens + cross_kv_per_src_token * src_tokens)
               + 2 * d * v * tgt_tokens)                                      # output projection
    return 3.0 * forward


def batch_training_flops(cfg: ModelConfig, src_lengths: Sequence[int], tgt_lengths: Sequence[int]) -> float:
    """The same model, row by row: ``src_lengths`` [batch] source positions (ids + EOS) and ``tgt_lengths``
    [batch] target positions (BOS + ids) of each row, padding excluded. Uniform rows give training_flops."""
    s = np.asarray(src_lengths, dtype=np.float64)
    t = np.asarray(tgt_lengths, dtype=np.float64)
    d, f, v = float(cfg.d_model), float(cfg.ffn_dim), float(cfg.tgt_vocab_size)
    encoder = 2 * (4 * d * d + 2 * d * f) * s.sum() + 4 * d * (s * s).sum()
    decoder = (2 * (6 * d * d + 2 * d * f) * t.sum() + 2 * d * (t * t).sum() + 4 * d * (s * t).sum()
               + 4 * d * d * s.sum())
    forward = cfg.encoder_layers * encoder + cfg.decoder_layers * decoder + 2 * d * v * t.sum()
    return 3.0 * float(forward)
