"""A tiny sequence-classification datamodule for the tests: no shipped dataset is a classify task yet.

Class = the sign pattern of the sequence's sum of the first feature (3 classes: < -1, [-1, 1], > 1),
so a recurrent model can learn it; sizes are tiny.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from peephole_lstm.data import TaskSpec


class ToyClassifyDataModule(L.LightningDataModule):
    def __init__(self, n: int = 64, seq_len: int = 6, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, seq_len, 2, generator=g)
        s = x[:, :, 0].sum(1)
        y = (s > -1).long() + (s > 1).long()
        self.data = TensorDataset(x, y)
        self.batch_size = batch_size

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(task="classify", input_size=2, output_size=3)

    def _loader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
