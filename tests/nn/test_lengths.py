"""forward(padded, lengths=...): the same numbers as a PackedSequence of those lengths, and a form that
traces (torch.export with dynamic dimensions; ONNX's sequence_lens is tested in test_onnx.py)."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .helpers import gradients, make_lstm, weighted_sum

CASES = {
    "fused": dict(),
    "fused-2layers-bi-batch_first": dict(num_layers=2, bidirectional=True, batch_first=True, peephole="full"),
    "eager-layer_norm": dict(layer_norm=True),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_lengths_give_what_packing_gives(kwargs):
    lstm = make_lstm(3, 4, **kwargs)
    T, lengths = 6, torch.tensor([6, 2, 4])
    x = torch.randn((3, T, 3) if lstm.batch_first else (T, 3, 3), dtype=torch.float64, requires_grad=True)
    out, (h_n, c_n) = lstm(x, lengths=lengths)
    packed, (want_h, want_c) = lstm(pack_padded_sequence(x, lengths, batch_first=lstm.batch_first,
                                                         enforce_sorted=False))
    want_out = pad_packed_sequence(packed, batch_first=lstm.batch_first, total_length=T)[0]
    got = (out, h_n, c_n) + gradients(weighted_sum((out, h_n, c_n)), [x, *lstm.parameters()])
    want = (want_out, want_h, want_c) + gradients(weighted_sum((want_out, want_h, want_c)), [x, *lstm.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: m(x, lengths=torch.tensor([5, 2])), r"lengths= must be an integer tensor of shape \(3,\)"),
        (lambda m, x: m(x, lengths=torch.tensor([5.0, 2.0, 1.0])), "integer tensor"),
        (lambda m, x: m(x, lengths=torch.tensor([6, 2, 1])), r"must lie in \[0, 5\]"),
        (lambda m, x: m(x[:, 0], lengths=torch.tensor([5])), "needs a batched input"),
        (lambda m, x: m(pack_padded_sequence(x, torch.tensor([5, 2, 1])), lengths=torch.tensor([5, 2, 1])),
         "carries its own lengths"),
    ],
    ids=["shape", "dtype", "too-long", "unbatched", "packed"],
)
def test_bad_lengths_are_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_lstm(3, 4), torch.randn(5, 3, 3, dtype=torch.float64))


def test_lengths_export_with_dynamic_dimensions():
    lstm = make_lstm(3, 4, bidirectional=True).eval()
    batch = Dim("batch")
    exported = torch.export.export(
        lstm, (torch.randn(5, 3, 3, dtype=torch.float64),), {"lengths": torch.tensor([5, 2, 4])},
        dynamic_shapes={"input": {0: Dim("seq"), 1: batch}, "lengths": {0: batch}},
    )
    x, lengths = torch.randn(8, 4, 3, dtype=torch.float64), torch.tensor([8, 1, 3, 6])
    got = exported.module()(x, lengths=lengths)
    out, (h_n, c_n) = lstm(x, lengths=lengths)
    for g, w in zip((got[0], *got[1]), (out, h_n, c_n)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
