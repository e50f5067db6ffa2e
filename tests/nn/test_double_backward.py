"""Second-order gradients (gradient penalties, Hessian-vector products) on every backend.

The fused kernels' hand-written backward is not differentiable; when a graph of the gradient is asked
for, the fused path recomputes with the eager ops (nn/fused.py). These tests check that the result is
exact (gradgradcheck, float64) for every option the fused path covers, and equals nn.LSTM's numbers.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from peephole_lstm import PeepholeLSTM
from peephole_lstm.nn import fused

from .helpers import make_lstm
from .test_fused import OPTIONS, kernel

KERNELS = ["torch"] + (["cpp"] if fused.extension_available() else [])
# gradgradcheck costs seconds a case: the fast lane (docs/testing.md) checks the C++ kernel (when built) on
# one-layer modules; the fused-torch twin, the two-layer bidirectional case and TorchScript run in the full suite.
SLOW = pytest.mark.slow
LANE_KERNELS = [k if k == "cpp" else pytest.param(k, marks=SLOW) for k in KERNELS]


def _gradgradcheck(lstm, x, lengths=None):
    names = [n for n, _ in lstm.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in lstm.parameters())

    def f(x, *flat):
        inp = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = functional_call(lstm, dict(zip(names, flat)), (inp,))
        if lengths is not None:
            out = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        return out, h, c

    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", LANE_KERNELS)
@pytest.mark.parametrize("kwargs", [pytest.param(o, marks=SLOW) if o.get("num_layers", 1) > 1 else o for o in OPTIONS],
                         ids=[str(o) for o in OPTIONS])
def test_gradgradcheck_fused(name, kwargs):
    lstm = make_lstm(2, 4, **kwargs, backend="fused")  # hidden 4: room for the proj_size=3 case
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    with kernel(name):
        _gradgradcheck(lstm, x)
        assert lstm.last_path == f"fused-{name}"


@pytest.mark.slow  # packing adds many ops to gradgradcheck's Jacobians
@pytest.mark.parametrize("name", KERNELS)
def test_gradgradcheck_fused_packed(name):
    lstm = make_lstm(2, 3, peephole="full", bidirectional=True, backend="fused")
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    with kernel(name):
        _gradgradcheck(lstm, x, lengths=torch.tensor([4, 2, 3]))


@pytest.mark.parametrize("backend", ["eager", pytest.param("script", marks=SLOW)])
@pytest.mark.parametrize("kwargs", [dict(peephole="full"),
                                    # layer norm: many more ops in gradgradcheck's Jacobians (the slow case)
                                    pytest.param(dict(layer_norm=True, gate_recurrence=True), marks=SLOW)],
                         ids=["full", "layer_norm-FGR"])
def test_gradgradcheck_loop_backends(backend, kwargs):
    lstm = make_lstm(2, 3, **kwargs, backend=backend)
    _gradgradcheck(lstm, torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True))


def _gradient_penalty_grads(module, x):
    """d/dparams of ||d sum(output) / d x||^2 (the input-gradient penalty of WGAN-GP and friends)."""
    x = x.clone().requires_grad_()
    out, _ = module(x)
    (dx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return torch.autograd.grad((dx ** 2).sum(), list(module.parameters()), allow_unused=True, materialize_grads=True)


# The fast lane: the fused path (what "auto" picks on CPU); the per-step loop's double backward is
# checked by test_gradgradcheck_loop_backends.
@pytest.mark.parametrize("backend", [pytest.param("auto", marks=SLOW), "fused", pytest.param("eager", marks=SLOW),
                                     pytest.param("script", marks=SLOW)])
def test_gradient_penalty_equals_nn_lstm(backend):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True).double()
    ours = PeepholeLSTM(3, 5, num_layers=2, bidirectional=True, peephole="none", backend=backend).double()
    ours.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    want = _gradient_penalty_grads(ref, x)
    got = dict(zip([n for n, _ in ours.named_parameters()], _gradient_penalty_grads(ours, x)))
    for (name, _), w in zip(ref.named_parameters(), want):
        torch.testing.assert_close(got[name], w, atol=1e-12, rtol=1e-10)
        assert w.abs().sum() > 0  # every weight really takes part in the penalty


def test_hessian_vector_product_on_fused_path():
    lstm = make_lstm(2, 3, peephole="diagonal", backend="fused")
    eager = make_lstm(2, 3, peephole="diagonal", backend="eager")
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    v = [torch.randn_like(p) for p in lstm.parameters()]

    def hvp(m):
        loss = (m(x)[0] ** 2).sum()
        g = torch.autograd.grad(loss, list(m.parameters()), create_graph=True)
        return torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), list(m.parameters()))

    for a, b in zip(hvp(lstm), hvp(eager)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert lstm.last_path.startswith("fused")


def test_first_order_training_keeps_the_fast_backward():
    """A plain backward never runs the eager recompute: its gradient must not build a graph."""
    lstm = make_lstm(2, 3, backend="fused")
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    out, _ = lstm(x)
    (dx,) = torch.autograd.grad(out.sum(), x)
    assert dx.grad_fn is None
