"""The timing tasks of Gers, Schraudolph & Schmidhuber (2002), "Learning precise timing with LSTM
recurrent networks", adapted to fixed-length sequences with a random onset:

- ``msd`` (measuring spike delays): the input has two spikes ``d`` steps apart,
  ``d`` in ``[delay_min, delay_max]``, encoded as ``v = (d - delay_min + 1) / (delay_max - delay_min + 1)``
  in (0, 1] (``d / delay_max`` when ``delay_min=1``; 0.5 vs 1 for the 49-vs-50 task, so that the two
  classes differ by as much as the whole range does). Three target layouts (``msd_target``):
  ``"end"``: ``v``, one value per sequence (task ``forecast``, horizon 1, read after the last
  step); ``"per_step"``: 0 before the second spike, ``v`` from it on (task ``seq2seq``; the
  paper reads the delay at the second spike); ``"spike"``: emit one spike ``d`` steps after the second
  input spike, at ``t1 + 2d`` (task ``seq2seq``; the variant of a public re-implementation, see
  docs/results.md). ``delay_min=49, delay_max=50`` is the paper's fine 49-vs-50 distinction.
- ``gts`` (generating timed spikes): a start spike at ``t0`` in ``[0, start_max]``; the target is 1 at
  ``t0 + k * period`` for k >= 1 and 0 elsewhere (task ``seq2seq``).
- ``pfg`` (periodic function generation): a start spike at ``t0``; the target is 0 before ``t0`` and a
  ``waveform`` of ``period`` steps and amplitude 1 from ``t0`` on (task ``seq2seq``); sine and triangle
  start at 0 rising, square starts with its +1 half.

Inputs are one channel (the spikes). ``inverse_transform`` maps MSD targets back to steps.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from peephole_lstm.data.base import SplitDataModule, TaskSpec, check_choice, check_int

TIMING_TASKS = ("msd", "gts", "pfg")
MSD_TARGETS = ("end", "per_step", "spike")
WAVEFORMS = ("sine", "triangle", "square")
SPLITS = ("train", "val", "test")


def waveform(name: str, phase: np.ndarray) -> np.ndarray:
    """Periodic function of ``phase`` (in periods) with amplitude 1, in phase with the sine."""
    if name == "sine":
        return np.sin(2 * np.pi * phase)
    if name == "triangle":
        return 2 / np.pi * np.arcsin(np.sin(2 * np.pi * phase))
    return np.where(np.mod(phase, 1.0) < 0.5, 1.0, -1.0)


class TimingDataModule(SplitDataModule):
    """Synthetic timing tasks (see module docstring); every split is generated from ``seed``."""

    def __init__(
        self,
        task: str = "msd",
        seq_len: int = 100,
        n_train: int = 1000,
        n_val: int = 200,
        n_test: int = 200,
        delay_min: int = 10,
        delay_max: int = 50,
        msd_target: str = "end",
        period: int = 20,
        waveform: str = "sine",
        start_max: int = 20,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_choice("task", task, TIMING_TASKS)
        check_choice("msd_target", msd_target, MSD_TARGETS)
        check_choice("waveform", waveform, WAVEFORMS)
        self.task, self.msd_target, self.waveform = task, msd_target, waveform
        self.seq_len = check_int("seq_len", seq_len, 2)
        self.sizes = {s: check_int(f"n_{s}", n, 1) for s, n in zip(SPLITS, (n_train, n_val, n_test))}
        self.delay_min = check_int("delay_min", delay_min, 1)
        self.delay_max = check_int("delay_max", delay_max, 1)
        self.period = check_int("period", period, 2)
        self.start_max = check_int("start_max", start_max, 0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        if task == "msd":
            if delay_min > delay_max:
                raise ValueError(f"delay_min={delay_min} must be <= delay_max={delay_max}")
            if seq_len <= delay_max:
                raise ValueError(f"seq_len={seq_len} must be > delay_max={delay_max} so both spikes fit")
            if msd_target == "spike" and seq_len <= 2 * delay_max:
                raise ValueError(f"seq_len={seq_len} must be > 2 * delay_max = {2 * delay_max} so that the "
                                 "output spike at t1 + 2d fits (msd_target=spike)")
        elif seq_len <= start_max + period:
            raise ValueError(
                f"seq_len={seq_len} must be > start_max + period = {start_max + period} "
                "so that every sequence contains at least one full period after the start spike"
            )
        self.datasets: dict[str, TensorDataset] | None = None

    # ------------------------------------------------------------------ generation
    def _generate(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        T = self.seq_len
        x = np.zeros((n, T, 1))
        rows = np.arange(n)
        if self.task == "msd":
            d = rng.integers(self.delay_min, self.delay_max + 1, n)
            last = 2 * d if self.msd_target == "spike" else d  # the last event must fit: t1 + last <= T - 1
            t1 = rng.integers(0, T - last)
            x[rows, t1, 0] = 1.0
            x[rows, t1 + d, 0] = 1.0
            value = (d - self.delay_min + 1) / self._delay_steps
            if self.msd_target == "end":
                y = value[:, None, None]
            elif self.msd_target == "spike":
                y = np.zeros((n, T, 1))
                y[rows, t1 + 2 * d, 0] = 1.0
            else:
                after = np.arange(T)[None, :] >= (t1 + d)[:, None]
                y = (after * value[:, None])[:, :, None]
        else:
            t0 = rng.integers(0, self.start_max + 1, n)
            x[rows, t0, 0] = 1.0
            elapsed = np.arange(T)[None, :] - t0[:, None]
            if self.task == "gts":
                y = (elapsed > 0) & (elapsed % self.period == 0)
            else:
                y = np.where(elapsed >= 0, waveform(self.waveform, elapsed / self.period), 0.0)
            y = y[:, :, None]
        return torch.from_numpy(x).float(), torch.from_numpy(np.asarray(y, dtype=np.float64)).float()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.datasets = {}
        for i, split in enumerate(SPLITS):
            rng = np.random.default_rng([self.seed, i])  # splits are independent draws
            self.datasets[split] = TensorDataset(*self._generate(self.sizes[split], rng))

    # ------------------------------------------------------------------ contract
    @property
    def spec(self) -> TaskSpec:
        self.setup()
        if self.task == "msd" and self.msd_target == "spike":
            return TaskSpec(task="seq2seq", input_size=1, output_size=1, target_names=["spike"], timing="echo_spike")
        if self.task == "msd":
            task = "forecast" if self.msd_target == "end" else "seq2seq"
            return TaskSpec(task=task, input_size=1, output_size=1, horizon=1, target_names=["delay"],
                            timing="delay", delay_scale=float(self._delay_steps),
                            delay_offset=float(self.delay_min - 1))
        if self.task == "gts":
            return TaskSpec(task="seq2seq", input_size=1, output_size=1, target_names=["spike"], timing="spike_train")
        return TaskSpec(task="seq2seq", input_size=1, output_size=1, target_names=[self.waveform])

    def inverse_transform(self, y: Tensor) -> Tensor:
        """MSD: normalised delay -> delay in steps; spike and waveform targets are already in their units."""
        if self.task == "msd" and self.msd_target != "spike":
            return y * self._delay_steps + (self.delay_min - 1)
        return y

    @property
    def _delay_steps(self) -> int:
        """How many delays the MSD task draws from: the encoded target is (d - delay_min + 1) / this."""
        return self.delay_max - self.delay_min + 1
