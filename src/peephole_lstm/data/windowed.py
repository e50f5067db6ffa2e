"""Sliding windows over a multivariate series, shared by the Mackey-Glass and CSV datamodules.

The series is split chronologically first, and windows are cut inside each split, so no window
(inputs or targets) crosses a split boundary and no target index is shared between splits.
Normalisation statistics come from the training rows only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from peephole_lstm.data.base import (
    DataError,
    SplitDataModule,
    TaskSpec,
    check_fractions,
    check_int,
    split_ranges,
)

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def window_starts(n: int, window: int, horizon: int, stride: int) -> range:
    """Start indices of the windows ``[s, s+window)`` whose targets ``[s+window, s+window+horizon)`` fit in ``n``."""
    return range(0, n - window - horizon + 1, stride)


def normalisation_stats(train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train_rows.mean(axis=0)
    std = train_rows.std(axis=0)
    # A constant training column carries no scale; dividing by ~0 would blow up val/test values.
    std = np.where(std < 1e-12, 1.0, std)
    return mean, std


class WindowDataset(Dataset):
    """``(x, y)`` = ``(inputs[s:s+window], targets[s+window:s+window+horizon])`` for each window start ``s``."""

    def __init__(self, inputs: Tensor, targets: Tensor, window: int, horizon: int, stride: int) -> None:
        self.inputs, self.targets = inputs, targets
        self.window, self.horizon = window, horizon
        self.starts = window_starts(len(inputs), window, horizon, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.starts[i]
        e = s + self.window
        return self.inputs[s:e], self.targets[e : e + self.horizon]


class WindowedSeriesDataModule(SplitDataModule):
    """Base for forecasting datamodules; subclasses implement ``_load``.

    ``_load`` returns ``(values, input_names, target_names)``: ``values`` is a float array of shape
    ``(T, len(input_names))`` whose first ``len(target_names)`` columns are the targets (past target
    values are always model inputs).
    """

    def __init__(
        self,
        *,
        window: int,
        horizon: int,
        stride: int,
        val_fraction: float,
        test_fraction: float,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.window = check_int("window", window, 1)
        self.horizon = check_int("horizon", horizon, 1)
        self.stride = check_int("stride", stride, 1)
        check_fractions(val_fraction, test_fraction)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.datasets: dict[str, WindowDataset] | None = None

    def _load(self) -> tuple[np.ndarray, list[str], list[str]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        values, input_names, target_names = self._load()
        values = np.asarray(values, dtype=np.float64)
        need = self.window + self.horizon
        self.split_rows = split_ranges(len(values), self.val_fraction, self.test_fraction)
        for split, (a, b) in self.split_rows.items():
            if b - a < need:
                raise DataError(
                    f"the {SPLIT_NAMES[split]} split has {b - a} rows (of {len(values)} in the series, "
                    f"val_fraction={self.val_fraction:g}, test_fraction={self.test_fraction:g}) but "
                    f"window + horizon = {self.window} + {self.horizon} needs at least {need}; "
                    "use a longer series, a smaller window/horizon, or other split fractions"
                )
        a, b = self.split_rows["train"]
        self.mean, self.std = normalisation_stats(values[a:b])
        normed = torch.from_numpy((values - self.mean) / self.std).float()
        n_targets = len(target_names)
        self.input_names, self.target_names = list(input_names), list(target_names)
        self.datasets = {
            split: WindowDataset(
                normed[a:b], normed[a:b, :n_targets], self.window, self.horizon, self.stride
            )
            for split, (a, b) in self.split_rows.items()
        }

    @property
    def spec(self) -> TaskSpec:
        self.setup()
        return TaskSpec(
            task="forecast",
            input_size=len(self.input_names),
            output_size=len(self.target_names),
            horizon=self.horizon,
            target_names=list(self.target_names),
        )

    def inverse_transform(self, y: Tensor) -> Tensor:
        """Normalised targets ``(..., output_size)`` -> original units."""
        self.setup()
        n = len(self.target_names)
        mean = torch.as_tensor(self.mean[:n], dtype=y.dtype, device=y.device)
        std = torch.as_tensor(self.std[:n], dtype=y.dtype, device=y.device)
        return y * std + mean
