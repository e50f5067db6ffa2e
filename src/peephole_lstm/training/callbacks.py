"""Every Lightning callback of the framework (conf/callbacks/*.yaml instantiates them):

- LastCheckpoint: `checkpoints/last.ckpt` at the end of every training epoch, for `ckpt_path=last`;
- FiniteGuard: stop at the first non-finite loss or gradient, before it reaches the weights or a checkpoint;
- PredictionPlot: after test, predictions vs truth on the test split as PNGs (and W&B / TensorBoard images);
- MetricHistory: every epoch's metrics in `history.csv` and one line each in the log.

FiniteGuard: Lightning's `detect_anomaly` only reports where autograd made a NaN (and is slow), and a NaN
loss is otherwise trained on silently: Adam turns every weight into NaN and the next epoch's `last.ckpt` is
poisoned. FiniteGuard checks the loss before backward and every gradient before the optimizer step, and
refuses to write a checkpoint whose weights are not finite, so the last checkpoint on disk stays the last
good state. The error names the epoch, the global step and what went non-finite.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from peephole_lstm import rundir
from peephole_lstm.training import plotting
from peephole_lstm.training.checkpointing import EPOCH_LOG, RNG_STATES, rng_states, set_rng_states
from peephole_lstm.training.loggers import TensorBoardLogger


# ------------------------------------------------------------------------------------------- checkpoints
class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt` at the end of every training epoch, improved or not, for `ckpt_path=last`.

    ModelCheckpoint(save_last=True) refreshes last.ckpt only when it saves a new best, so a resume from it
    would redo every epoch since the last improvement. Checkpoints also carry what a resume needs to
    continue exactly like an uninterrupted run: the random generators' states (dropout, zoneout), restored
    when the next epoch starts, and the epoch's training metrics (EPOCH_LOG), which Lightning logs just
    after this save, so that a resume after a kill in between can still write that epoch's row.
    """

    def __init__(self, dirpath: str, filename: str = Path(rundir.LAST_CHECKPOINT).stem) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, save_last=False,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self._restored_rng: Optional[dict] = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> dict:
        checkpoint[RNG_STATES] = rng_states()
        progress = trainer.fit_loop.epoch_progress.current
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        if progress.processed > progress.completed and metrics:  # inside the epoch-end hooks: values are final
            checkpoint[EPOCH_LOG] = {"epoch": trainer.current_epoch, "step": trainer.global_step - 1, "metrics": metrics}
        return super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Applied at the next epoch start, not now: building the run in between draws random numbers too.
        self._restored_rng = checkpoint.get(RNG_STATES)
        return super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._restored_rng is None:
            return
        set_rng_states(self._restored_rng)
        self._restored_rng = None
        # An uninterrupted run starts this epoch's data iterator only now, which draws its base seed from
        # the global generator; Lightning started the first resumed epoch's iterator before this hook.
        # Replaying that start keeps every later draw (dropout masks) where it would have been.
        loader = trainer.train_dataloader
        if loader is not None:
            iter(loader)


# ------------------------------------------------------------------------------------------- NaN/Inf
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


# ------------------------------------------------------------------------------------------- records
class PredictionPlot(pl.Callback):
    """Plots regression tasks (forecast: consecutive test windows; seq2seq: example sequences) in the
    datamodule's original units (`inverse_transform`, when it has one) under `dirpath`.

    Runs on rank 0 over the datamodule's own test loader, so under DDP it still shows the whole split
    in order, not one rank's shard.
    """

    def __init__(self, dirpath: str, max_points: int = 500, max_sequences: int = 3) -> None:
        self.dirpath = Path(dirpath)
        self.max_points, self.max_sequences = max_points, max_sequences
        self.paths: list[Path] = []

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        task = pl_module.spec["task"]
        dm = trainer.datamodule
        if not trainer.is_global_zero or task not in ("forecast", "seq2seq") or dm is None:
            return
        limit = self.max_points if task == "forecast" else self.max_sequences
        truth, pred = self._collect(pl_module, dm.test_dataloader(), limit)
        if hasattr(dm, "inverse_transform"):
            truth, pred = dm.inverse_transform(truth), dm.inverse_transform(pred)
        names = pl_module.spec.get("target_names") or []
        if task == "forecast":
            fig = plotting.forecast_figure(truth.numpy(), pred.numpy(), names, "Test split: forecast vs truth")
        else:
            fig = plotting.sequence_figure(truth.numpy(), pred.numpy(), names, "Test split: prediction vs truth")
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"test_{task}.png"
        plotting.save(fig, path)
        self.paths.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"plots/test_{task}", images=[str(path)])
            elif isinstance(logger, TensorBoardLogger):
                logger.log_image(f"plots/test_{task}", path, step=trainer.global_step)

    @staticmethod
    @torch.no_grad()
    def _collect(pl_module: pl.LightningModule, loader, limit: int):
        was_training = pl_module.training
        pl_module.eval()
        truths, preds, n = [], [], 0
        for x, y in loader:
            pred = pl_module(x.to(pl_module.device))[0].cpu()
            truths.append(y)
            preds.append(pred)
            n += len(y)
            if n >= limit:
                break
        pl_module.train(was_training)
        return torch.cat(truths)[:limit].float(), torch.cat(preds)[:limit].float()


class MetricHistory(pl.Callback):
    """Writes every epoch's logged metrics (val/*, train/*) to `path` (CSV, one row per epoch), so learning
    curves and "epochs until val/solve_rate first reached 0.9" can be read from the run dir whatever the
    logger. Rewritten atomically after each epoch; a resumed run keeps the rows of the epochs before
    the one it resumes at. The same metrics, and the test metrics at the end, also go to the Python log
    as one line each ("epoch 3: train/loss=0.0123 val/loss=..."): the console and, under Hydra, the run's
    train.log, which then holds the run's numbers after the progress bar is gone."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []
        if trainer.current_epoch > 0 and self.path.exists():  # resuming: keep the epochs already done
            import pandas as pd

            done = pd.read_csv(self.path)
            self.rows = [r for r in done.to_dict("records") if r["epoch"] < trainer.current_epoch]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation, so one row holds this epoch's train and val metrics.
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        _log.info("epoch %d: %s", trainer.current_epoch, _line(metrics))
        row = {"epoch": trainer.current_epoch, **metrics}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = [",".join(columns)] + [",".join("" if r.get(c) is None else repr(r[c]) for c in columns)
                                       for r in self.rows]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.path)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            _log.info("test: %s", _line(metrics))


_log = logging.getLogger(__name__)


def _line(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
