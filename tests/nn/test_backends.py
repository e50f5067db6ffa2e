"""Every backend computes the same numbers as the eager per-step loop; the cell scripts with
torch.jit.script and a layer exports with torch.export for inference."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from peephole_lstm import PeepholeLSTMCell, variants
from peephole_lstm.nn.options import BACKENDS

from .helpers import gradients, make_cell, make_lstm, weighted_sum

# The issue asks for a scriptable cell; torch's deprecation notice for TorchScript is expected here.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script.*` is deprecated:DeprecationWarning")

IN, HID, T, B = 3, 4, 5, 3
# "compile" has its own, smaller test below (each new set of static flags costs a compilation);
# "triton" runs CPU tensors only in Triton's interpreter, in its own session (tests/nn/test_triton.py).
FAST_BACKENDS = [b for b in BACKENDS if b not in ("eager", "compile", "triton")]
CASES = {
    "vanilla": dict(),
    "2layers-bi-full-proj-zoneout": dict(num_layers=2, bidirectional=True, peephole="full", proj_size=2, zoneout=0.2),
    "FGR-layer_norm-CIFG-clip": dict(gate_recurrence=True, layer_norm=True, coupled=True, cell_clip=0.5),
    "NIG-NOAF-previous": dict(input_gate=False, output_activation="identity", output_peephole="previous"),
}


def _run(lstm, x, lengths=None):
    """Outputs, final states and the gradients wrt input and parameters of one forward/backward."""
    x = x.clone().requires_grad_()
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, (h_n, c_n) = lstm(inp)
    out = out.data if lengths is not None else out
    return (out, h_n, c_n) + gradients(weighted_sum((out, h_n, c_n)), [x, *lstm.parameters()])


def _assert_same(got, want, tol):
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"result {k}: {m}")


def _with_backend(lstm, backend):
    other = copy.deepcopy(lstm)
    other.backend = backend
    return other


def _backend_cases():
    """Every case on every backend. Layer norm and gate recurrence are not fused: "fused" and "auto" both
    run the per-step loop for that case, which is slow in float64 here; the fast lane keeps "fused" (it
    warns about the fallback) and leaves "auto" to the full suite."""
    return [pytest.param(kwargs, backend, id=f"{name}-{backend}",
                         marks=pytest.mark.slow if (name, backend) == ("FGR-layer_norm-CIFG-clip", "auto") else ())
            for name, kwargs in CASES.items() for backend in FAST_BACKENDS]


@pytest.mark.parametrize("kwargs, backend", _backend_cases())
def test_backends_agree_with_eager(kwargs, backend):
    eager = make_lstm(IN, HID, backend="eager", **kwargs)
    other = _with_backend(eager, backend)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    _assert_same(_run(other, x), _run(eager, x), 1e-9)
    _assert_same(_run(other, x, [5, 2, 4]), _run(eager, x, [5, 2, 4]), 1e-9)
    # float32 too, the dtype real training runs in.
    _assert_same(_run(other.float(), x.float()), _run(eager.float(), x.float()), 1e-5)


@pytest.mark.slow  # Dynamo tracing
def test_compile_backend_agrees_with_eager():
    kwargs = CASES["FGR-layer_norm-CIFG-clip"] | dict(num_layers=2, bidirectional=True, peephole="full")
    eager = make_lstm(IN, HID, backend="eager", **kwargs)
    compiled = _with_backend(eager, "compile")
    x = torch.randn(T, B, IN, dtype=torch.float64)
    _assert_same(_run(compiled, x), _run(eager, x), 1e-9)
    # A new sequence length and batch size reuse the compiled step without changing the numbers.
    x = torch.randn(T + 2, B + 1, IN, dtype=torch.float64)
    _assert_same(_run(compiled, x, [7, 1, 3, 6]), _run(eager, x, [7, 1, 3, 6]), 1e-9)


SCRIPT_CASES = {
    **{name: v for name, v in variants.items() if not v["gate_recurrence"]},  # FGR: see the .step test
    "full-proj-layer_norm-clip": dict(peephole="full", proj_size=2, layer_norm=True, cell_clip=0.5),
    "CIFG-zoneout-no-bias": dict(coupled=True, zoneout=0.3, bias=False),
}


@pytest.mark.parametrize("kwargs", SCRIPT_CASES.values(), ids=SCRIPT_CASES.keys())
def test_scripted_cell_matches_eager(kwargs):
    cell = make_cell(IN, HID, **kwargs)
    scripted = torch.jit.script(cell)
    x = torch.randn(B, IN, dtype=torch.float64)
    out = kwargs.get("proj_size", 0) or HID
    hx = (torch.randn(B, out, dtype=torch.float64), torch.randn(B, HID, dtype=torch.float64))
    for args in ((x,), (x, hx), (x[0], (hx[0][0], hx[1][0]))):
        _assert_same(scripted(*args), cell(*args), 1e-12)
    # The scripted module still trains: gradients flow to its (shared) parameters.
    h, c = scripted(x, hx)
    _assert_same(gradients(weighted_sum((h, c)), list(cell.parameters())),
                 gradients(weighted_sum(cell(x, hx)), list(cell.parameters())), 1e-12)


def test_scripted_cell_step_with_gate_recurrence():
    cell = make_cell(IN, HID, gate_recurrence=True, peephole="full")
    scripted = torch.jit.script(cell)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    states = [(torch.zeros(B, HID, dtype=torch.float64),) * 2 + (torch.zeros(B, 3 * HID, dtype=torch.float64),)] * 2
    for t in range(T):
        states = [module.step(x[t], *s) for module, s in zip((scripted, cell), states)]
        _assert_same(states[0], states[1], 1e-12)
    # ...and stepping the cell is what the layer does.
    lstm = make_lstm(IN, HID, gate_recurrence=True, peephole="full")
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    out, (h_n, c_n) = lstm(x)
    _assert_same((h_n[0], c_n[0]), states[1][:2], 1e-12)


def test_unscriptable_use_is_reported():
    cell = torch.jit.script(PeepholeLSTMCell(IN, HID, gate_recurrence=True))
    with pytest.raises(Exception, match="step"):
        cell(torch.randn(B, IN))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), pytest.param(dict(num_layers=2, bidirectional=True, peephole="full", gate_recurrence=True, layer_norm=True,
                               proj_size=2, zoneout=0.2, batch_first=True), marks=pytest.mark.slow)],
    ids=["vanilla", "2layers-bi-full-FGR-layer_norm-proj-zoneout"],
)
def test_export_matches_eager(kwargs):
    lstm = make_lstm(IN, HID, **kwargs).float().eval()
    x = torch.randn(B, T, IN) if kwargs.get("batch_first") else torch.randn(T, B, IN)
    exported = torch.export.export(lstm, (x,))
    new_x = torch.randn_like(x)
    got = exported.module()(new_x)
    out, (h_n, c_n) = lstm(new_x)
    _assert_same((got[0], *got[1]), (out, h_n, c_n), 1e-6)


@pytest.mark.slow  # Dynamo tracing
def test_cell_and_layer_trace_as_one_graph():
    """fullgraph=True fails on any graph break; dynamo's "eager" backend checks that without paying for
    an inductor compilation (the compile backend test above pays for one)."""
    cell = make_cell(IN, HID, peephole="full", layer_norm=True, proj_size=2, zoneout=0.2, cell_clip=0.5)
    x = torch.randn(B, IN, dtype=torch.float64)
    traced = torch.compile(cell, fullgraph=True, backend="eager")
    _assert_same(traced(x), cell(x), 1e-12)
    fgr = make_cell(IN, HID, gate_recurrence=True, coupled=True)
    state = (torch.randn(B, HID, dtype=torch.float64),) * 2 + (torch.rand(B, 2 * HID, dtype=torch.float64),)
    step = torch.compile(fgr.step, fullgraph=True, backend="eager")
    _assert_same(step(x, *state), fgr.step(x, *state), 1e-12)
    lstm = make_lstm(IN, HID, num_layers=2, bidirectional=True, gate_recurrence=True, peephole="full")
    xs = torch.randn(T, B, IN, dtype=torch.float64)
    out, (h_n, c_n) = torch.compile(lstm, fullgraph=True, backend="eager")(xs)
    _assert_same((out, h_n, c_n), (lambda o: (o[0], *o[1]))(lstm(xs)), 1e-12)
