"""Handwritten digits, read row by row: sequence classification on a real dataset that ships offline.

scikit-learn's `load_digits` (the UCI optical-recognition digits, 1797 images of 8x8 pixels with values
0-16, ten classes of about 180 each) is part of its wheel: no download. Each image is a sequence of its 8
rows, each row the 8 pixel values scaled to [0, 1], and the label is the digit: the classic "read an image
as a sequence" task for recurrent networks, small enough for a CPU.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from peephole_lstm.data.base import SplitDataModule, TaskSpec, check_fractions, check_int

CLASSES = 10
ROWS = COLUMNS = 8
MAX_PIXEL = 16.0  # the dataset's pixel values are counts of set bits in 4x4 blocks: 0..16
SPLIT_SEED = 0  # the split is fixed, so runs with different seeds are scored on the same test images


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in [0, 1], labels (1797,) in 0..9) from the copy inside scikit-learn."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:
        raise ImportError(f"data=digits reads scikit-learn's bundled copy: pip install scikit-learn, or "
                          f"pip install -e '.[train]' ({e})") from e
    data = _load()
    return data.images.astype(np.float32) / MAX_PIXEL, data.target.astype(np.int64)


class DigitsDataModule(SplitDataModule):
    """Classify 8x8 digit images read as sequences of 8 rows of 8 pixels (task `classify`, 10 classes).

    The images are split at random (a fixed permutation, stratified by class, independent of `seed`) into
    train | val | test by `val_fraction` and `test_fraction`; `seed` orders the training batches.
    """

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_fractions(val_fraction, test_fraction)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.datasets: dict[str, TensorDataset] | None = None

    def _split(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Indices per split; each class is cut in the same proportions, so every split has every digit."""
        rng = np.random.default_rng(SPLIT_SEED)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for digit in range(CLASSES):
            idx = rng.permutation(np.flatnonzero(labels == digit))
            n_val, n_test = (max(1, round(len(idx) * f)) for f in (self.val_fraction, self.test_fraction))
            parts["val"].append(idx[:n_val])
            parts["test"].append(idx[n_val:n_val + n_test])
            parts["train"].append(idx[n_val + n_test:])
        return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        images, labels = load_digits()
        self.datasets = {
            split: TensorDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))
            for split, idx in self._split(labels).items()
        }

    @property
    def spec(self) -> TaskSpec:
        self.setup()
        return TaskSpec(task="classify", input_size=COLUMNS, output_size=CLASSES,
                        target_names=[str(d) for d in range(CLASSES)])
