"""peephole="none" is exactly torch.nn.LSTM / nn.LSTMCell once given the same state_dict: outputs,
states and gradients, in float32 and float64, for every input form nn.LSTM accepts."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell

from .helpers import gradients, weighted_sum

IN, HID, T, B = 3, 5, 6, 4
CONFIGS = {
    "1layer": dict(),
    "2layers": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "2layers-bidirectional-proj": dict(num_layers=2, bidirectional=True, proj_size=3),
    "batch_first-proj": dict(batch_first=True, proj_size=2),
    "no-bias": dict(bias=False, num_layers=2),
}
DTYPES = [torch.float32, torch.float64]


def _pair(dtype, **kwargs):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(IN, HID, **kwargs).to(dtype)
    ours = PeepholeLSTM(IN, HID, peephole="none", **kwargs).to(dtype)
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    # With peephole="none" the two modules have exactly the same parameters, nothing left over.
    assert not result.missing_keys and not result.unexpected_keys
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    return ref, ours


def _state(ref, batch, dtype, unbatched=False):
    n = ref.num_layers * (2 if ref.bidirectional else 1)
    shape = (n,) if unbatched else (n, batch)
    h = torch.randn(*shape, ref.proj_size or HID, dtype=dtype, requires_grad=True)
    c = torch.randn(*shape, HID, dtype=dtype, requires_grad=True)
    return h, c


def _compare(ref, ours, make_input, hx, dtype):
    """Run both modules on separate leaf copies of the input and compare outputs and all gradients."""
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    results = []
    for module in (ref, ours):
        x, module_input = make_input()
        out, (h_n, c_n) = module(module_input, hx)
        data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
        leaves = [x, *module.parameters()] + (list(hx) if hx is not None else [])
        results.append((out, (data, h_n, c_n), gradients(weighted_sum((data, h_n, c_n)), leaves)))
    (out_r, vals_r, grads_r), (out_o, vals_o, grads_o) = results
    for name, a, b in zip(("output", "h_n", "c_n"), vals_o, vals_r):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    names = ["input"] + [n for n, _ in ref.named_parameters()] + ["h0", "c0"]
    for name, a, b in zip(names, grads_o, grads_r):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"d {name}: {m}")
    return out_o, out_r


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", CONFIGS.values(), ids=CONFIGS.keys())
# the fast lane (docs/testing.md) pads without an initial state; with one, in the full suite
@pytest.mark.parametrize("with_hx", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["hx=None", "hx"])
def test_padded_input(kwargs, dtype, with_hx):
    ref, ours = _pair(dtype, **kwargs)
    shape = (B, T, IN) if kwargs.get("batch_first") else (T, B, IN)
    x0 = torch.randn(*shape, dtype=dtype)
    hx = _state(ref, B, dtype) if with_hx else None

    def make_input():
        x = x0.clone().requires_grad_()
        return x, x

    _compare(ref, ours, make_input, hx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", [CONFIGS["1layer"], CONFIGS["2layers-bidirectional-proj"]], ids=["1layer", "2layers-bi-proj"])
def test_unbatched_input(kwargs, dtype):
    ref, ours = _pair(dtype, **kwargs)
    x0 = torch.randn(T, IN, dtype=dtype)
    for hx in (None, _state(ref, 1, dtype, unbatched=True)):
        _compare(ref, ours, lambda: (lambda x: (x, x))(x0.clone().requires_grad_()), hx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kwargs", [CONFIGS["1layer"], CONFIGS["2layers-bidirectional-proj"]], ids=["1layer", "2layers-bi-proj"])
def test_packed_input(kwargs, enforce_sorted, dtype):
    ref, ours = _pair(dtype, **kwargs)
    lengths = torch.tensor([6, 4, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 4])
    x0 = torch.randn(T, B, IN, dtype=dtype)
    hx = _state(ref, B, dtype)

    def make_input():
        x = x0.clone().requires_grad_()
        return x, pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)

    out_o, out_r = _compare(ref, ours, make_input, hx, dtype)
    torch.testing.assert_close(out_o.batch_sizes, out_r.batch_sizes, rtol=0, atol=0)
    for field in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out_o, field), getattr(out_r, field)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_lstm_cell(bias, dtype):
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(IN, HID, bias=bias).to(dtype)
    ours = PeepholeLSTMCell(IN, HID, bias=bias, peephole="none").to(dtype)
    ours.load_state_dict(ref.state_dict())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    x0 = torch.randn(B, IN, dtype=dtype)
    state = (torch.randn(B, HID, dtype=dtype), torch.randn(B, HID, dtype=dtype))
    for batched in (True, False):
        for given in (False, True):
            got = []
            for module in (ref, ours):
                x = (x0 if batched else x0[0]).clone().requires_grad_()
                hx = tuple((s if batched else s[0]).clone().requires_grad_() for s in state) if given else None
                h, c = module(x, hx)
                leaves = [x, *module.parameters()] + (list(hx) if given else [])
                got.append((h, c, *gradients(weighted_sum((h, c)), leaves)))
            for a, b in zip(*got):
                torch.testing.assert_close(a, b, **tol)
