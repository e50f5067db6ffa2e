"""PeepholeLSTM and PeepholeLSTMCell against the independent per-sample, per-step reference (float64):
outputs, final states and the gradients of a scalar loss wrt the input and every parameter."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peephole_lstm import variants

from .helpers import gradients, make_cell, make_lstm, weighted_sum
from .reference import reference_cell, reference_lstm

IN, HID, T, B = 3, 4, 5, 3

# Each option alone, then in pairs where two options touch the same term (peephole kind x which c the
# output gate sees, layer norm x clipping, FGR x missing/coupled gates, projection x zoneout...).
OPTION_CASES = {
    "peephole=none": dict(peephole="none"),
    "diagonal-previous": dict(output_peephole="previous"),
    "full-current": dict(peephole="full"),
    "full-previous": dict(peephole="full", output_peephole="previous"),
    "gates=o": dict(peephole_gates="o"),
    "gates=o-previous": dict(peephole_gates="o", output_peephole="previous"),
    "gates=if-full": dict(peephole="full", peephole_gates="if"),
    "gates=fo-CIFG": dict(coupled=True, peephole_gates="fo"),
    "gates=io-NFG": dict(forget_gate=False, peephole_gates="io"),
    "layer_norm": dict(layer_norm=True),
    "layer_norm-full": dict(layer_norm=True, peephole="full"),
    "layer_norm-CIFG-clip": dict(layer_norm=True, coupled=True, cell_clip=0.5),
    "cell_clip": dict(cell_clip=0.3),
    "cell_clip-full-previous": dict(cell_clip=0.4, peephole="full", output_peephole="previous"),
    "zoneout": dict(zoneout=0.3),
    "zoneout-proj": dict(zoneout=0.4, proj_size=2),
    "proj": dict(proj_size=2),
    "proj-full": dict(proj_size=3, peephole="full"),
    "bias=False": dict(bias=False),
    "NIG-NOG": dict(input_gate=False, output_gate=False),
    "NIAF-NOAF": dict(input_activation="identity", output_activation="identity"),
    "FGR-CIFG": dict(gate_recurrence=True, coupled=True),
    "FGR-NOG-full": dict(gate_recurrence=True, output_gate=False, peephole="full"),
    "FGR-layer_norm-zoneout": dict(gate_recurrence=True, layer_norm=True, zoneout=0.2),
    "2layers": dict(num_layers=2),
    "2layers-bidirectional": dict(num_layers=2, bidirectional=True),
    "2layers-bidirectional-FGR-proj": dict(num_layers=2, bidirectional=True, gate_recurrence=True, proj_size=2),
    "2layers-bidirectional-layer_norm-CIFG-full": dict(
        num_layers=2, bidirectional=True, layer_norm=True, coupled=True, peephole="full"
    ),
}
CASES = {**{f"variant-{k}": v for k, v in variants.items()}, **OPTION_CASES}
LAYER_KEYS = ("num_layers", "bidirectional")
CELL_CASES = {k: v for k, v in CASES.items() if not set(v) & set(LAYER_KEYS)}


def _inputs(seed: int, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, IN, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def _assert_close_all(actual, expected, what):
    assert len(actual) == len(expected)
    for name, a, e in zip(what, actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


def _check_lstm(lstm, kwargs, x, hx=None, lengths=None, to_module=lambda x: x, from_module=lambda y: y):
    """Compare lstm (fed to_module(x)) with the reference on time-major x, values and gradients."""
    out, (h_n, c_n) = lstm(to_module(x), hx)
    out = from_module(out)
    ref_out, (ref_h, ref_c) = reference_lstm(lstm.state_dict(keep_vars=True), IN, HID, x, hx, lengths, **kwargs)
    _assert_close_all((out, h_n, c_n), (ref_out, ref_h, ref_c), ("output", "h_n", "c_n"))

    names, params = zip(*lstm.named_parameters())
    leaves = (x, *params) + (tuple(hx) if hx is not None else ())
    got = gradients(weighted_sum((out, h_n, c_n)), leaves)
    want = gradients(weighted_sum((ref_out, ref_h, ref_c)), leaves)
    labels = ("d input",) + tuple(f"d {n}" for n in names) + ("d h0", "d c0")
    _assert_close_all(got, want, labels)


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_layer_matches_reference(kwargs):
    lstm = make_lstm(IN, HID, **kwargs)
    _check_lstm(lstm, kwargs, _inputs(0))


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(peephole="full", num_layers=2, bidirectional=True, proj_size=2)], ids=["1layer", "2layers-bi-proj"]
)
def test_layouts_and_given_state_match_reference(kwargs):
    """batch_first, unbatched input and a given hx go through the same equations."""
    lstm = make_lstm(IN, HID, **kwargs)
    n = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    out_size = kwargs.get("proj_size", 0) or HID
    gen = torch.Generator().manual_seed(5)
    hx = tuple(torch.randn(n, B, s, generator=gen, dtype=torch.float64).requires_grad_() for s in (out_size, HID))
    _check_lstm(lstm, kwargs, _inputs(1), hx=hx)

    lstm.batch_first = True
    swap = lambda t: t.transpose(0, 1)  # noqa: E731
    _check_lstm(lstm, {**kwargs, "batch_first": True}, _inputs(2), to_module=swap, from_module=swap)

    lstm.batch_first = False
    x = _inputs(3)[:, :1].detach().requires_grad_()
    out, (h_n, c_n) = lstm(x[:, 0])
    assert out.dim() == 2 and h_n.dim() == 2
    ref_out, (ref_h, ref_c) = reference_lstm(lstm.state_dict(), IN, HID, x, **kwargs)
    _assert_close_all((out, h_n, c_n), (ref_out[:, 0], ref_h[:, 0], ref_c[:, 0]), ("output", "h_n", "c_n"))
    h0 = tuple(s[:, 0] for s in hx)
    out, (h_n, c_n) = lstm(x[:, 0], h0)
    ref_out, (ref_h, ref_c) = reference_lstm(lstm.state_dict(), IN, HID, x, tuple(s[:, :1] for s in hx), **kwargs)
    _assert_close_all((out, h_n, c_n), (ref_out[:, 0], ref_h[:, 0], ref_c[:, 0]), ("output", "h_n", "c_n"))


@pytest.mark.parametrize("kwargs", [v for v in CASES.values() if "cell_clip" in v],
                         ids=[k for k, v in CASES.items() if "cell_clip" in v])
def test_clip_cases_do_clip(kwargs):
    """The cell_clip cases above would prove nothing if the cell state never reached the clip."""
    x = _inputs(0)
    clipped = make_lstm(IN, HID, **kwargs)(x)[0]
    unclipped = make_lstm(IN, HID, **{**kwargs, "cell_clip": None})(x)[0]
    assert (clipped - unclipped).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs", CELL_CASES.values(), ids=CELL_CASES.keys())
def test_cell_matches_reference(kwargs):
    cell = make_cell(IN, HID, **kwargs)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, IN, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, kwargs.get("proj_size", 0) or HID, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, HID, generator=gen, dtype=torch.float64, requires_grad=True)
    n_gates = len(cell.options.gate_names)
    a = torch.rand(B, n_gates * HID if kwargs.get("gate_recurrence") else 0, generator=gen, dtype=torch.float64)
    a.requires_grad_()
    if kwargs.get("gate_recurrence"):
        got = cell.step(x, h, c, a)
        want = reference_cell(cell.state_dict(keep_vars=True), HID, x, h, c, a, **kwargs)
        labels = ("h", "c", "gates")
    else:
        got = cell(x, (h, c))
        want = reference_cell(cell.state_dict(keep_vars=True), HID, x, h, c, **kwargs)[:2]
        labels = ("h", "c")
        h1, c1 = cell(x[0], (h[0], c[0]))  # unbatched, like nn.LSTMCell
        _assert_close_all((h1, c1), (want[0][0], want[1][0]), ("unbatched h", "unbatched c"))
    _assert_close_all(got, want, labels)

    names, params = zip(*cell.named_parameters())
    leaves = (x, h, c, a, *params)
    _assert_close_all(
        gradients(weighted_sum(got), leaves),
        gradients(weighted_sum(want), leaves),
        ("d x", "d h", "d c", "d gates") + tuple(f"d {n}" for n in names),
    )


@st.composite
def _options(draw):
    """Any valid combination of options, with gradients checked the same way as the cases above."""
    coupled = draw(st.booleans())
    kwargs = dict(
        peephole=draw(st.sampled_from(["none", "diagonal", "full"])),
        peephole_gates=draw(st.sampled_from(["ifo", "if", "io", "fo", "i", "f", "o"])),
        output_peephole=draw(st.sampled_from(["current", "previous"])),
        coupled=coupled,
        input_gate=True if coupled else draw(st.booleans()),
        forget_gate=True if coupled else draw(st.booleans()),
        output_gate=draw(st.booleans()),
        input_activation=draw(st.sampled_from(["tanh", "identity"])),
        output_activation=draw(st.sampled_from(["tanh", "identity"])),
        cell_clip=draw(st.sampled_from([None, 0.4])),
        layer_norm=draw(st.booleans()),
        zoneout=draw(st.sampled_from([0.0, 0.3])),
        proj_size=draw(st.sampled_from([0, 2])),
        num_layers=draw(st.sampled_from([1, 2])),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    # A narrower set than "ifo" may only name gates that exist (else PeepholeLSTM refuses it).
    exists = {"i": kwargs["input_gate"] and not coupled, "f": kwargs["forget_gate"], "o": kwargs["output_gate"]}
    if kwargs["peephole_gates"] != "ifo":
        kwargs["peephole_gates"] = "".join(g for g in kwargs["peephole_gates"] if exists[g]) or "ifo"
    has_gate = kwargs["input_gate"] or kwargs["forget_gate"] or kwargs["output_gate"]
    kwargs["gate_recurrence"] = has_gate and draw(st.booleans())
    return kwargs


@pytest.mark.slow  # 25 random option combinations; the parametrized tests above cover each option
@settings(max_examples=25, deadline=None, derandomize=True)
@given(kwargs=_options(), seed=st.integers(0, 2**16))
def test_any_option_combination_matches_reference(kwargs, seed):
    lstm = make_lstm(IN, HID, seed=seed, **kwargs)
    _check_lstm(lstm, kwargs, _inputs(seed))
