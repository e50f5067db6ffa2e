"""Session-wide test plumbing: which test is running, for tests/helpers/scripts.py's slow-marker check,
and the number of intra-op threads."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import scripts

MACHINE_THREADS = torch.get_num_threads()  # torch's default, before the session changes it


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The tests' tensors are tiny: handing each op to a second thread costs more than the op, and on a
    busy machine an OpenMP worker waiting for a descheduled peer burns CPU (nn.LSTM(20, 20, 2) in float64:
    60 ms a call with 2 threads, under 1 ms with 1; tests/nn's vs-nn.LSTM, zoneout and gradcheck tests:
    43 s with 2 threads, 15 s with 1, at load average 8 on 2 cores). In-process training runs set one thread
    anyway (extras.torch_threads: 1). Tests of the kernels' parallel code take the `all_threads` fixture."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(MACHINE_THREADS)


@pytest.fixture
def all_threads():
    """torch's default thread count for this test: the C++ kernel splits GEMMs of 2^17 multiply-adds and
    more across threads, which one thread would leave untested."""
    torch.set_num_threads(MACHINE_THREADS)
    yield MACHINE_THREADS
    torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Set before the item's fixtures are set up (a module-scoped fixture that starts a run counts as
    # part of the first test that needs it) and cleared after its teardown.
    scripts.current_item = item
    try:
        return (yield)
    finally:
        scripts.current_item = None
