"""What every datamodule shares: the TaskSpec contract, argument checks, splitting and loaders.

The contract (docs/data.md): ``dm.spec`` calls ``dm.setup()``, which loads and validates all
data, so every data error surfaces before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

TASKS = ("forecast", "seq2seq", "classify", "lm", "multilabel")
# multilabel targets of variable-length sequences are padded to the batch's longest with this value on
# every output of a frame past the sequence's end; the loss and metrics leave those frames out.
PAD_TARGET = -1.0
TIMING_KINDS = (None, "delay", "echo_spike", "spike_train")


@dataclass
class TaskSpec:
    """What a model needs to know about a datamodule's batches (see docs/data.md)."""

    task: str
    input_size: int
    output_size: int
    horizon: int = 1
    target_names: list[str] = field(default_factory=list)
    vocab: list[str] | None = None
    stateful: bool = False
    # Timing tasks (data/timing.py) also score exact timing (training/metrics.py TimingAccuracy):
    # "delay" (a delay read from the output: steps = output * delay_scale + delay_offset), "echo_spike" (one output
    # spike after the last input spike) or "spike_train" (an output spike exactly at every target spike).
    timing: str | None = None
    delay_scale: float = 1.0
    delay_offset: float = 0.0

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("timing", self.timing, TIMING_KINDS)


class DataError(ValueError):
    """The data itself (file, columns, values, length) is unusable; the message says why and where."""


# ----------------------------------------------------------------------------- argument checks
def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; `window=True` is a typo, not a window of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be an integer >= {minimum}")
    return value


def check_fractions(val_fraction: object, test_fraction: object) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value!r} must be a number strictly between 0 and 1")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} must be < 1 "
            "so that a training split remains"
        )


# ----------------------------------------------------------------------------- splitting
def split_bounds(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Chronological split of ``n`` items: train ``[0, a)``, val ``[a, b)``, test ``[b, n)``."""
    n_val = int(n * val_fraction)
    n_test = int(n * test_fraction)
    train_end = n - n_val - n_test
    return train_end, train_end + n_val


def split_ranges(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    a, b = split_bounds(n, val_fraction, test_fraction)
    return {"train": (0, a), "val": (a, b), "test": (b, n)}


# ----------------------------------------------------------------------------- loaders
class EpochShuffleSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` at every epoch start, so a run resumed from a checkpoint sees the
    same batch order as an uninterrupted one (a plain shuffled DataLoader would restart its RNG).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose idempotent setup() fills ``self.datasets`` with the "train", "val" and "test"
    splits; only the training split is shuffled (anew each epoch, from seed and epoch). A subclass whose
    items differ in length sets `collate_fn` (a staticmethod) to pad them into a batch."""

    collate_fn: Callable | None = None

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        return make_loader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=split == "train",
            num_workers=self.num_workers,
            seed=self.seed,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
