"""The one switch of the conformance suite: every test takes `impl`, which builds either torch.nn.LSTM /
nn.LSTMCell themselves or PeepholeLSTM / PeepholeLSTMCell with peephole="none", "diagonal" or "full".

The tests are PyTorch's own CPU tests for nn.LSTM and nn.LSTMCell (test/test_modules.py's generic module
tests fed with common_modules.py's LSTM inputs, test/test_nn.py's LSTM tests and test/test_autocast.py's
CPU one), with their
assertions unchanged. Running them on nn.LSTM proves the port; running them on PeepholeLSTM is the
conformance check. Tests that compare against nn.LSTM's numbers skip the peephole variants (peepholes
change the numbers); every other test runs on all four.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import pytest
import torch

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell


@dataclass(frozen=True)
class Impl:
    name: str
    lstm: Callable[..., torch.nn.Module]
    cell: Callable[..., torch.nn.Module]
    peephole: str | None  # None: torch.nn itself

    @property
    def is_torch(self) -> bool:
        return self.peephole is None

    @property
    def extra_params(self) -> int:
        """Parameters per layer and direction beyond nn.LSTM's (weight_ch for peepholes)."""
        return 0 if self.peephole in (None, "none") else 1

    def needs_nn_lstm_numbers(self) -> None:
        if self.peephole not in (None, "none"):
            pytest.skip(f"compares against nn.LSTM's numbers, which peephole={self.peephole!r} changes")


IMPLS = [
    Impl("nn.LSTM", torch.nn.LSTM, torch.nn.LSTMCell, None),
    Impl("peephole=none", partial(PeepholeLSTM, peephole="none"), partial(PeepholeLSTMCell, peephole="none"), "none"),
    Impl("peephole=diagonal", partial(PeepholeLSTM, peephole="diagonal"),
         partial(PeepholeLSTMCell, peephole="diagonal"), "diagonal"),
    Impl("peephole=full", partial(PeepholeLSTM, peephole="full"), partial(PeepholeLSTMCell, peephole="full"), "full"),
]


# nn.LSTM itself runs every test too, as the control that the port of PyTorch's tests is right; that
# checks the tests rather than this package, so it is left to the full suite (docs/testing.md).
@pytest.fixture(params=[pytest.param(i, marks=pytest.mark.slow) if i.is_torch else i for i in IMPLS],
                ids=[i.name for i in IMPLS])
def impl(request) -> Impl:
    return request.param
