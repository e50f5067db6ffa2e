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


@pytest.fixture(autouse=True, scope="package")
def _one_intra_op_thread():
    """These shapes are tiny: handing each op to a second thread costs more than the op, and on a busy
    machine an OpenMP worker waiting for a descheduled peer burns CPU (nn.LSTM(20, 20, 2) in float64:
    60 ms a call with 2 threads, under 1 ms with 1). Restored after the suite."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=IMPLS, ids=[i.name for i in IMPLS])
def impl(request) -> Impl:
    return request.param
