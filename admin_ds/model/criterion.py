"""Label-smoothed cross-entropy over the output projection, optionally in recomputed chunks.

The [tokens, V] logits are the largest activation of a translation model (32k vocabulary vs a few
hundred features). With ``chunk_tokens`` set, each chunk's logits are recomputed in backward instead of
kept, which is what makes activation checkpointing pay off beyond the layers themselves.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_losses(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  target: torch.Tensor, epsilon: float, pad_id: int) -> torch.Tensor:
    """features [N, D], target [N] -> stacked (smoothed loss sum, nll sum), computed in fp32."""
    lprobs = F.log_softmax(F.linear(features, weight, bias).float(), dim=-1)  # [N, V]
    keep = target.ne(pad_id)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [N]
    smooth = -lprobs.sum(-1)  # [N]
    # fairseq's label smoothing: ε spread uniformly over the vocabulary, 1 - ε on the reference.
    loss = (1.0 - epsilon) * nll + (epsilon / lprobs.size(-1)) * smooth
    return torch.stack([loss.masked_fill(~keep, 0.0).sum(), nll.masked_fill(~keep, 0.0).sum()])


def label_smoothed_loss(features: torch.Tensor, output_proj: torch.nn.Linear, target: torch.Tensor,
                        epsilon: float, pad_id: int, chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over non-pad targets of the label-smoothed loss and of the NLL.

    Args:
        features: decoder output [B, T, D].
        output_proj: the projection to the vocabulary (weight [V, D]).
        target: [B, T] ids, ``pad_id`` where there is nothing to predict.
        chunk_tokens: 0 = one pass; N > 0 = chunks of N tokens, each recomputed in backward.
    Returns: (loss_sum, nll_sum), fp32 scalars.
    """
    flat_features = features.reshape(-1, features.size(-1))  # [B*T, D]
    flat_target = target.reshape(-1)  # [B*T]
    weight, bias = output_proj.weight, output_proj.bias
    if chunk_tokens <= 0 or not torch.is_grad_enabled():
        sums = _chunk_losses(flat_features, weight, bias, flat_target, epsilon, pad_id)
    else:
        sums = sum(checkpoint(_chunk_losses, f, weight, bias, t, epsilon, pad_id, use_reentrant=False)
                   for f, t in zip(flat_features.split(chunk_tokens), flat_target.split(chunk_tokens)))
    return sums[0], sums[1]
