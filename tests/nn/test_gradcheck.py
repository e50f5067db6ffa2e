"""torch.autograd.gradcheck (float64, tiny sizes) of the layer and the cell, wrt input, state and every
parameter, across the Greff variants and the options with their own parameters or nonlinearities."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from peephole_lstm import variants

from .helpers import make_cell, make_lstm

CASES = {
    **{f"variant-{k}": v for k, v in variants.items()},
    "full": dict(peephole="full"),
    "full-previous-gates=if": dict(peephole="full", output_peephole="previous", peephole_gates="if"),
    "layer_norm": dict(layer_norm=True),
    "FGR-layer_norm-full": dict(gate_recurrence=True, layer_norm=True, peephole="full"),
    "proj-zoneout": dict(proj_size=1, zoneout=0.25),
    "cell_clip": dict(cell_clip=0.3),
}


def _gradcheck(module, args, fast_mode=False):
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())

    def f(*flat):
        state = dict(zip(names, flat[len(args):]))
        out = functional_call(module, state, flat[: len(args)])
        return tuple(torch.utils._pytree.tree_leaves(out))

    assert torch.autograd.gradcheck(f, (*args, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast_mode)


def _lane(cases):
    """Layer norm multiplies gradcheck's work (10 s for one cell case): its cases run in the full suite only
    (docs/testing.md)."""
    return [pytest.param(kw, marks=pytest.mark.slow) if kw.get("layer_norm") else kw for kw in cases]


@pytest.mark.parametrize("kwargs", _lane(CASES.values()), ids=CASES.keys())
def test_gradcheck_layer(kwargs):
    # fast_mode (random projections of the Jacobian) keeps the two-layer bidirectional check cheap; the
    # cell test below checks the full Jacobian of one step.
    lstm = make_lstm(2, 2, **kwargs, num_layers=2, bidirectional=True)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    _gradcheck(lstm, (x,), fast_mode=True)


@pytest.mark.parametrize("kwargs", _lane(CASES.values()), ids=CASES.keys())
def test_gradcheck_cell(kwargs):
    cell = make_cell(2, 3, **kwargs)
    out_size = kwargs.get("proj_size", 0) or 3
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, out_size, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    if kwargs.get("gate_recurrence"):
        a = torch.rand(2, len(cell.options.gate_names) * 3, dtype=torch.float64, requires_grad=True)
        module = _Step(cell)
        _gradcheck(module, (x, h, c, a))
    else:
        _gradcheck(_Forward(cell), (x, h, c))


class _Forward(torch.nn.Module):
    """cell(x, (h, c)) with tensor arguments only, as gradcheck needs."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


class _Step(_Forward):
    def forward(self, x, h, c, a):
        return self.cell.step(x, h, c, a)
