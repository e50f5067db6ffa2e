"""PredictionPlot: after test, predictions vs truth on the test split as PNGs (and W&B / TensorBoard images)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from peephole_lstm.training import plotting
from peephole_lstm.training.loggers import TensorBoardLogger


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
