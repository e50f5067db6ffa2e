"""The Triton kernels of the fused path (nn/triton_kernels.py) against the eager per-step loop.

Triton decides when the kernels are defined whether they run compiled (GPU) or in its interpreter
(TRITON_INTERPRET=1, any tensor on CPU). So on a machine without a GPU this module re-runs itself in a
child pytest with that variable set, and the session that collected it is not affected; on a CUDA
machine the same tests run compiled, on CUDA tensors.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from peephole_lstm import PeepholeLSTM
from peephole_lstm.nn import fused
from tests.helpers.scripts import run_script
from tests.nn.helpers import make_lstm
from tests.nn.test_fused import OPTIONS, _assert_close, _forward_only, _run, kernel

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e '.[triton]')")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else ("cuda" if torch.cuda.is_available() else None)
RUNS_HERE = pytest.mark.skipif(DEVICE is None, reason="runs in the child pytest with TRITON_INTERPRET=1 (below)")
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) for kw in OPTIONS]


@pytest.mark.slow  # a child pytest, and the interpreter runs each kernel instruction in Python
@pytest.mark.skipif(DEVICE is not None, reason="the tests of this module run in this session")
def test_triton_kernels_in_the_interpreter():
    done = run_script("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", Path(__file__), timeout=1800,
                      env={"TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def _pair(kwargs, dtype=torch.float64, seed=0):
    """The same random module on DEVICE with backend 'triton', and on CPU with backend 'eager'."""
    fast = make_lstm(4, 5, seed=seed, backend="triton", **kwargs).to(device=DEVICE, dtype=dtype)
    slow = make_lstm(4, 5, seed=seed, backend="eager", **kwargs).to(dtype=dtype)
    return fast, slow


def _cpu(values):
    return [v.cpu() for v in values]


@RUNS_HERE
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("kwargs", OPTIONS, ids=IDS)
def test_triton_matches_eager(kwargs, dtype, tol):
    fast, slow = _pair(kwargs, dtype)
    x = torch.randn(4, 3, 4, dtype=torch.float64).to(dtype)
    n = fast.num_layers * fast.num_directions
    hx = (torch.randn(n, 3, fast.options[0].output_size, dtype=dtype), torch.randn(n, 3, 5, dtype=dtype))
    got = _run(fast, x.to(DEVICE), hx=tuple(h.to(DEVICE) for h in hx))
    assert fast.last_path == "fused-triton"
    _assert_close(_cpu(got), _run(slow, x, hx=hx), tol)
    # Variable lengths: padded steps leave the state and the gradients as the eager loop does.
    lengths = torch.tensor([4, 1, 3])
    _assert_close(_cpu(_run(fast, x.to(DEVICE), lengths)), _run(slow, x, lengths), tol)


@RUNS_HERE
@pytest.mark.parametrize("kwargs", OPTIONS, ids=IDS)
def test_triton_inference_matches_eager(kwargs):
    # No gradient wanted: the kernels store no gates and keep two cell states instead of T + 1.
    fast, slow = _pair(kwargs)
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 3])
    with torch.inference_mode():
        got, got_packed = _forward_only(fast, x.to(DEVICE)), _forward_only(fast, x.to(DEVICE), lengths)
    assert fast.last_path == "fused-triton"
    _assert_close(_cpu(got), _forward_only(slow, x), 1e-10)
    _assert_close(_cpu(got_packed), _forward_only(slow, x, lengths), 1e-10)


@RUNS_HERE
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_triton_half_precision_follows_float64(dtype):
    # The gate math runs in float32 on half-precision tensors, as in the C++ kernel. No cell_clip here:
    # a cell value that rounds across the clip's bound switches its gradient off, a difference that no
    # tolerance bounds.
    kwargs = dict(peephole="full", proj_size=3)
    fast, _ = _pair(kwargs, dtype)
    _, reference = _pair(kwargs)  # eager, float64
    x = torch.randn(4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = _run(reference, x)
    got = _run(fast, x.to(device=DEVICE, dtype=dtype))
    assert all(g.dtype == dtype for g in got)
    _assert_close([g.cpu().double() for g in got], want, 0.1)


@RUNS_HERE
def test_triton_gradcheck():
    lstm = make_lstm(2, 3, seed=3, backend="triton", peephole="full", proj_size=2, cell_clip=0.8, zoneout=0.2)
    lstm = lstm.to(DEVICE)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    params = list(lstm.parameters())

    def f(x, *weights):
        with torch.nn.utils.stateless._reparametrize_module(lstm, dict(zip(dict(lstm.named_parameters()), weights))):
            out, (h, c) = lstm(x)
        return out, h, c

    # fast_mode: one random direction per input (the full Jacobian costs minutes in the interpreter);
    # the comparisons with the eager loop above check every gradient exactly.
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    assert lstm.last_path == "fused-triton"


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device (compiled kernels)")
def test_auto_picks_triton_for_cuda_tensors():
    lstm = PeepholeLSTM(3, 4).cuda()
    lstm(torch.randn(5, 2, 3, device="cuda"))
    assert lstm.last_path == "fused-triton"
    with kernel("torch"):  # the compiled kernels switched off: the pure-PyTorch twin
        lstm(torch.randn(5, 2, 3, device="cuda"))
    assert lstm.last_path == "fused-torch"


@pytest.mark.skipif(INTERPRETED, reason="checks the error outside the interpreter")
def test_triton_backend_on_cpu_without_the_interpreter_says_how_to_run_it():
    lstm = PeepholeLSTM(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lstm(torch.randn(5, 2, 3))


def test_cpu_tensors_keep_their_kernel_with_triton_installed():
    # Triton is for CUDA tensors; CPU ones keep the C++ kernel (or the twin) under backend="auto".
    lstm = PeepholeLSTM(3, 4)
    lstm(torch.randn(5, 2, 3))
    assert lstm.last_path == ("fused-cpp" if fused.extension_available() else "fused-torch")
    assert fused.triton_available()
