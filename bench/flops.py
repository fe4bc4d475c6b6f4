"""Model FLOPs of one training step (forward + backward = 3x forward matmul FLOPs), for MFU figures.

Counts matrix products only (2 FLOPs per multiply-add); activation checkpointing's recomputation is not
model work and is not counted, as is usual for MFU.
"""

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
