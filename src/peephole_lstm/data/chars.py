"""Character-level language modelling on a UTF-8 text file, or on a corpus that ships with Python.

The default corpus is the text of Python's interactive help topics (``pydoc_data.topics``, part of
the CPython standard library, ~465 kB of English prose and code from the Python documentation,
PSF-licensed): present offline wherever Python is, and nothing is committed to this repository.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from peephole_lstm.data.base import (
    DataError,
    SplitDataModule,
    TaskSpec,
    check_fractions,
    check_int,
    make_loader,
    split_ranges,
)
from peephole_lstm.data.textfile import read_utf8

UNK = "<unk>"  # vocab[0]: characters never seen in the training split
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def default_corpus() -> str:
    """Python's help-topic texts (what ``help("assert")`` prints), in a fixed key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise DataError(
            "the default corpus (the standard library's pydoc_data.topics) is missing from this "
            "Python installation; pass a UTF-8 text file with data.path=..."
        ) from e
    return "\n\n".join(topics[k] for k in sorted(topics))


class ChunkDataset(Dataset):
    """Non-overlapping chunks: item i is ``(ids[iT:(i+1)T], ids[iT+1:(i+1)T+1])``."""

    def __init__(self, ids: Tensor, seq_len: int) -> None:
        self.ids, self.T = ids, seq_len
        self.n = (len(ids) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = i * self.T
        return self.ids[s : s + self.T], self.ids[s + 1 : s + self.T + 1]


class StreamDataset(Dataset):
    """``batch_size`` contiguous streams, laid out so that an unshuffled loader's batch k+1 row b
    continues batch k row b (truncated BPTT with state carried across batches)."""

    def __init__(self, ids: Tensor, seq_len: int, batch_size: int) -> None:
        self.ids, self.T, self.B = ids, seq_len, batch_size
        self.stream_len = (len(ids) - 1) // batch_size
        self.n_batches = self.stream_len // seq_len

    def __len__(self) -> int:
        return self.n_batches * self.B

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        k, b = divmod(i, self.B)
        s = b * self.stream_len + k * self.T
        return self.ids[s : s + self.T], self.ids[s + 1 : s + self.T + 1]


class CharDataModule(SplitDataModule):
    """Next-character prediction; the text is split chronologically into train | val | test."""

    def __init__(
        self,
        path: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        stateful: bool = False,
        max_chars: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if path is not None and not isinstance(path, str):
            raise ValueError(f"path={path!r} must be a text file path, or null for the default corpus")
        self.path = path
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        check_fractions(val_fraction, test_fraction)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        if not isinstance(stateful, bool):
            raise ValueError(f"stateful={stateful!r} must be true or false")
        self.stateful = stateful
        self.max_chars = None if max_chars is None else check_int("max_chars", max_chars, 2)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.datasets: dict[str, Dataset] | None = None

    def _text(self) -> tuple[str, str]:
        if self.path is None:
            return "the default corpus (pydoc_data.topics)", default_corpus()
        p, text = read_utf8(self.path, "text file")
        return repr(str(p)), text

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        where, text = self._text()
        if self.max_chars is not None and len(text) > self.max_chars:
            where, text = f"{where} (cut to max_chars={self.max_chars})", text[: self.max_chars]
        ranges = split_ranges(len(text), self.val_fraction, self.test_fraction)
        need = self.batch_size * self.seq_len + 1 if self.stateful else self.seq_len + 1
        why = (
            f"stateful=true needs batch_size x seq_len + 1 = {self.batch_size} x {self.seq_len} + 1 = {need}"
            if self.stateful
            else f"one sequence needs seq_len + 1 = {self.seq_len} + 1 = {need}"
        )
        for split, (a, b) in ranges.items():
            if b - a < need:
                raise DataError(
                    f"{where} is too short: its {SPLIT_NAMES[split]} split has {b - a} characters "
                    f"(of {len(text)}; val_fraction={self.val_fraction:g}, test_fraction="
                    f"{self.test_fraction:g}) but {why}; use a longer text or a smaller "
                    "seq_len/batch_size"
                )
        a, b = ranges["train"]
        self.vocab = [UNK] + sorted(set(text[a:b]))
        self.index = {c: i for i, c in enumerate(self.vocab)}
        ids = self.encode(text)
        self.datasets = {
            split: StreamDataset(ids[a:b], self.seq_len, self.batch_size)
            if self.stateful
            else ChunkDataset(ids[a:b], self.seq_len)
            for split, (a, b) in ranges.items()
        }

    def encode(self, text: str) -> Tensor:
        """Characters -> int64 ids; characters outside the training vocabulary map to 0 (``<unk>``)."""
        if not hasattr(self, "index"):
            self.setup()
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        uniq, inverse = np.unique(codes, return_inverse=True)
        lookup = np.array([self.index.get(chr(c), 0) for c in uniq], dtype=np.int64)
        return torch.from_numpy(lookup[inverse].reshape(-1))

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    @property
    def spec(self) -> TaskSpec:
        self.setup()
        v = len(self.vocab)
        return TaskSpec(task="lm", input_size=v, output_size=v, vocab=list(self.vocab), stateful=self.stateful)

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        trainer = self.trainer
        if self.stateful and trainer is not None and trainer.world_size > 1:
            # a distributed sampler would interleave items across ranks and break the streams
            raise ValueError("stateful=true supports a single process only; use stateful=false with DDP")
        return make_loader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=split == "train" and not self.stateful,
            num_workers=self.num_workers,
            seed=self.seed,
            drop_last=self.stateful,
        )
