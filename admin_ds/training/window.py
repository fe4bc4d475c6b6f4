"""The sums a training row (or a validation) reports: loss, NLL, target tokens and model FLOPs, over ranks."""

from __future__ import annotations

import torch

from admin_ds.training.engine import all_reduce_sum

_LOSS, _NLL, _TOKENS, _FLOPS = range(4)  # one tensor, so that a single all_reduce sums them all


class TokenSums:
    """Sums of the loss, the NLL and the target tokens over batches. They stay on the device, so adding a
    batch never waits for the host; ``totals`` reads them (summed over ranks) at log steps only. The model
    FLOPs (training/speed.py) are known on the host: they are summed there and join the same reduction."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.flops = 0.0

    def add(self, loss_sum: torch.Tensor, nll_sum: torch.Tensor, tokens: int, flops: float = 0.0) -> None:
        self.sums[_LOSS] += loss_sum.detach()
        self.sums[_NLL] += nll_sum.detach()
        self.sums[_TOKENS] += tokens
        self.flops += flops

    def totals(self) -> dict[str, float]:
        """Per-token loss and NLL, the token count and the model FLOPs, over all ranks; then starts again
        from zero. The FLOPs of updates a rollback undid stay in: the device did that work in the window."""
        self.sums[_FLOPS] = self.flops
        summed = all_reduce_sum(self.sums, self.device)
        self.sums.zero_()
        self.flops = 0.0
        tokens = max(summed[_TOKENS].item(), 1.0)
        return {"loss": summed[_LOSS].item() / tokens, "nll": summed[_NLL].item() / tokens, "tokens": tokens,
                "flops": summed[_FLOPS].item()}
