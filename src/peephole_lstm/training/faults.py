"""Stop training at the first non-finite loss or gradient, before it reaches the weights or a checkpoint.

Lightning's `detect_anomaly` only reports where autograd made a NaN (and is slow), and a NaN loss is
otherwise trained on silently: Adam turns every weight into NaN and the next epoch's `last.ckpt` is
poisoned. FiniteGuard checks the loss before backward and every gradient before the optimizer step, and
refuses to write a checkpoint whose weights are not finite, so the last checkpoint on disk stays the last
good state. The error names the epoch, the global step and what went non-finite.
"""
from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """Training produced NaN/Inf; the message says where and what, and which checkpoint is still good."""


def _describe(t: Tensor) -> str:
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = [f"{nan} NaN"] if nan else []
    parts += [f"{inf} Inf"] if inf else []
    return f"{' and '.join(parts)} of {t.numel()} values" if t.numel() > 1 else ("NaN" if nan else f"{t.item()}")


def _first_non_finite(named: list[tuple[str, Optional[Tensor]]]) -> Optional[tuple[str, Tensor]]:
    tensors = [(n, t) for n, t in named if t is not None]
    if not tensors:
        return None
    # One device sync for the common all-finite case; locate the culprit only when there is one.
    if bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        return None
    return next((n, t) for n, t in tensors if not bool(torch.isfinite(t).all()))


class FiniteGuard(pl.Callback):
    """Raise NonFiniteError on a NaN/Inf loss or gradient (before the update) or weights (before a save)."""

    def _stop(self, trainer: pl.Trainer, what: str, outcome: str = "training stopped before the update") -> None:
        last = getattr(trainer.checkpoint_callback, "dirpath", None)
        keep = f"; the checkpoints in {last} hold the last finite state" if last else ""
        raise NonFiniteError(
            f"non-finite {what} at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
            f"{outcome}{keep}. Lower model.lr, clip gradients "
            f"(trainer.gradient_clip_val) or cell states (model.cell_clip), or check the data for extreme values"
        )

    def _any(self, trainer: pl.Trainer, bad: bool) -> bool:
        # Every DDP rank must raise together, or the others would hang in the next collective.
        return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self._any(trainer, bad):
            self._stop(trainer, f"loss ({_describe(loss.detach())})" if bad else "loss on another rank")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        found = _first_non_finite([(n, p.grad) for n, p in pl_module.named_parameters()])
        if self._any(trainer, found is not None):
            what = f"gradient of {found[0]} ({_describe(found[1])})" if found else "gradient on another rank"
            self._stop(trainer, what)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        found = _first_non_finite([(n, t) for n, t in checkpoint["state_dict"].items() if t.is_floating_point()])
        if found is not None:
            self._stop(trainer, f"weight {found[0]} ({_describe(found[1])})", "the checkpoint was not written")
