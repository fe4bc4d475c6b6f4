"""Label-smoothed cross-entropy fused with the output projection, computed in chunks of tokens.

The [tokens, V] logits are the largest activation of a translation model (32k vocabulary vs a few
hundred features). Keeping them for backward (plus their log-softmax) costs more memory than dozens of
layers, and recomputing them under activation checkpointing costs a second projection. Instead, the
training forward computes each chunk's loss *and* its gradient with respect to the features and the
projection weight at once, keeps only those gradients ([tokens, D] and [V, D]), and backward just
scales them by the incoming gradient. The loss is the last node of the graph and a sum, so its
gradient is known in forward up to that one scalar.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Elements of one chunk's [tokens, V] fp32 logits. CPU: 4M = 16 MiB (524 tokens of an 8k vocabulary),
# which sets the peak of a checkpointed step. Accelerators: 64M = 256 MiB (2048 tokens of a 32k
# vocabulary), since each chunk costs a dozen kernel launches and their memory is ample.
LOSS_CHUNK_ELEMENTS_CPU = 1 << 22
LOSS_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


def _chunk_log_probs(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     target: torch.Tensor, epsilon: float, pad_id: int):
    """features [n, D], target [n] -> (log-probs [n, V] fp32, keep [n] bool, loss sum, nll sum)."""
    lprobs = F.log_softmax(F.linear(features, weight, bias).float(), dim=-1)
    keep = target.ne(pad_id)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [n]
    smooth = -lprobs.sum(-1)  # [n]
    # fairseq's label smoothing: ε spread uniformly over the vocabulary, 1 - ε on the reference.
    loss = (1.0 - epsilon) * nll + (epsilon / lprobs.size(-1)) * smooth
    return lprobs, keep, loss.masked_fill(~keep, 0.0).sum(), nll.masked_fill(~keep, 0.0).sum()


class _FusedLoss(torch.autograd.Function):
    """(loss_sum, nll_sum) with d loss_sum / d (features, weight, bias) computed in forward, per chunk.

    d loss / d logits = softmax - (1 - ε) onehot(target) - ε / V on kept rows, 0 on padding. The
    matmuls run in the weight's dtype like autograd's would; the gradients are kept in fp32 and scaled by
    the incoming gradient (the loss scale, 1 / tokens, ...) before the cast back, so fp16 ones neither
    underflow nor lose the loss scale. nll_sum is for logging and carries no gradient.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, target, epsilon, pad_id, chunk_tokens):
        need_features, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_features = (torch.zeros(features.shape, dtype=torch.float32, device=features.device)
                         if need_features else None)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        sums = torch.zeros(2, dtype=torch.float32, device=features.device)
        vocab = weight.size(0)
        for start in range(0, features.size(0), chunk_tokens):
            f, t = features[start: start + chunk_tokens], target[start: start + chunk_tokens]
            lprobs, keep, loss, nll = _chunk_log_probs(f, weight, bias, t, epsilon, pad_id)
            sums[0] += loss
            sums[1] += nll
            grad = lprobs.exp_().sub_(epsilon / vocab)  # [n, V]
            grad.scatter_add_(-1, t.unsqueeze(-1), grad.new_full((t.numel(), 1), epsilon - 1.0))
            grad.mul_(keep.unsqueeze(-1))
            grad = grad.to(weight.dtype)
            if need_features:
                grad_features[start: start + chunk_tokens] = grad @ weight
            if need_weight:
                grad_weight += grad.t() @ f.to(weight.dtype)
            if need_bias:
                grad_bias += grad.sum(0)
            del lprobs, grad  # before the next chunk's logits exist: one chunk's [n, V] at a time
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss_sum, nll_sum = sums[0].clone(), sums[1].clone()
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    @once_differentiable  # the saved gradients are constants: a second derivative through them would be wrong
    def backward(ctx, grad_loss, _grad_nll):
        grads = [None if g is None else (g * grad_loss.float()).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None, None, None


def default_chunk_tokens(vocab_size: int, device_type: str) -> int:
    """Tokens per chunk of the fused loss: as many [tokens, V] fp32 logits as the device's budget holds."""
    budget = LOSS_CHUNK_ELEMENTS_CPU if device_type == "cpu" else LOSS_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, budget // vocab_size)


def label_smoothed_loss(features: torch.Tensor, output_proj: torch.nn.Linear, target: torch.Tensor,
                        epsilon: float, pad_id: int,
                        chunk_tokens: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over non-pad targets of the label-smoothed loss and of the NLL.

    Args:
        features: decoder output [B, T, D].
        output_proj: the projection to the vocabulary (weight [V, D], optional bias [V]).
        target: [B, T] ids, ``pad_id`` where there is nothing to predict.
        chunk_tokens: tokens per chunk; default: as many as fit the device's logits budget (see above).
    Returns: (loss_sum, nll_sum), fp32 scalars. Only loss_sum carries a gradient; nll_sum is for logging
        and is marked non-differentiable. The training backward is once-differentiable: a double backward
        through it raises.
    """
    flat_features = features.reshape(-1, features.size(-1))  # [B*T, D]
    flat_target = target.reshape(-1)  # [B*T]
    weight, bias = output_proj.weight, output_proj.bias
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(weight.size(0), features.device.type)
    differentiable = any(t is not None and t.requires_grad for t in (flat_features, weight, bias))
    if torch.is_grad_enabled() and differentiable:
        return _FusedLoss.apply(flat_features, weight, bias, flat_target, epsilon, pad_id, chunk_tokens)
    sums = torch.zeros(2, dtype=torch.float32, device=features.device)
    for f, t in zip(flat_features.split(chunk_tokens), flat_target.split(chunk_tokens)):
        _, _, loss, nll = _chunk_log_probs(f, weight, bias, t, epsilon, pad_id)
        sums += torch.stack([loss, nll])
    return sums[0], sums[1]
