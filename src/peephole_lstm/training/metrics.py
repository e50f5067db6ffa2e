"""The task metrics that torchmetrics does not ship: NRMSE and bits per character.

Both keep sums as states (reduced by summation across DDP ranks), so the value over a whole split is
exact, not an average of per-batch values.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class NormalizedRMSE(Metric):
    """NRMSE = RMSE / std(targets): sqrt(mean((pred - y)^2)) / sqrt(mean((y - mean(y))^2)).

    Both means run over every target value of the evaluated split (all windows, horizon steps and
    target columns pooled), with the population std. 0 is perfect; 1 is what always predicting the
    split's mean scores. Being a ratio it is the same in normalised and original units for one target.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # float64: sums of squares over a whole split lose digits in float32.
        for name in ("sum_squared_error", "sum_target", "sum_squared_target", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"NormalizedRMSE: preds {list(preds.shape)} and target {list(target.shape)} differ")
        preds, target = preds.detach().double(), target.detach().double()
        self.sum_squared_error += ((preds - target) ** 2).sum()
        self.sum_target += target.sum()
        self.sum_squared_target += (target**2).sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        mean = self.sum_target / self.count
        variance = (self.sum_squared_target / self.count - mean**2).clamp_min(0.0)
        return (torch.sqrt(self.sum_squared_error / self.count) / torch.sqrt(variance)).float()


class BitsPerCharacter(Metric):
    """Mean cross-entropy of the next-character prediction in bits: CE / ln 2 (CE in nats)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits (..., vocab), target (...) of class indices."""
        nats = torch.nn.functional.cross_entropy(
            logits.detach().reshape(-1, logits.shape[-1]).double(), target.reshape(-1), reduction="sum"
        )
        self.sum_nats += nats
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.sum_nats / self.count / math.log(2.0)).float()
