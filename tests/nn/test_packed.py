"""Variable-length batches: each sequence of a PackedSequence (or of its padded form) gives exactly what
running that sequence alone gives, so padding never leaks into outputs, states or gradients."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .helpers import gradients, make_lstm

IN, HID = 3, 4
LENGTHS = [5, 2, 7, 1]
CASES = {
    "forward": dict(),
    "bidirectional-2layers": dict(num_layers=2, bidirectional=True),
    "bidirectional-2layers-FGR-full-proj": dict(
        num_layers=2, bidirectional=True, gate_recurrence=True, peephole="full", proj_size=2
    ),
    "layer_norm-zoneout-CIFG": dict(layer_norm=True, zoneout=0.3, coupled=True),
}


def _sequences(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, IN, generator=gen, dtype=torch.float64) for n in LENGTHS]


def _padded(seqs, fill=0.0):
    x = torch.full((max(LENGTHS), len(seqs), IN), fill, dtype=torch.float64)
    for b, s in enumerate(seqs):
        x[: len(s), b] = s
    return x


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_packed_equals_each_sequence_alone(kwargs, enforce_sorted):
    lstm = make_lstm(IN, HID, **kwargs)
    seqs = _sequences()
    order = sorted(range(len(seqs)), key=lambda b: -LENGTHS[b]) if enforce_sorted else range(len(seqs))
    seqs = [seqs[b] for b in order]
    lengths = [len(s) for s in seqs]
    # Garbage in the padding must not matter.
    x = _padded(seqs, fill=123.0).requires_grad_()
    out, (h_n, c_n) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted))
    out, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths
    grads = gradients((out.sum() + h_n.sum() + c_n.sum()), [x])[0]

    for b, s in enumerate(seqs):
        s = s.clone().requires_grad_()
        alone, (h_alone, c_alone) = lstm(s.unsqueeze(1))
        n = len(s)
        torch.testing.assert_close(out[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h_n[:, b], h_alone[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c_n[:, b], c_alone[:, 0], rtol=1e-12, atol=1e-12)
        want = gradients(alone.sum() + h_alone.sum() + c_alone.sum(), [s])[0]
        torch.testing.assert_close(grads[:n, b], want, rtol=1e-12, atol=1e-12)
        assert torch.all(grads[n:, b] == 0), "padding received a gradient"


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_layout_matches_nn_lstm(batch_first):
    """Same PackedSequence metadata as nn.LSTM returns, for the layout the caller packed with."""
    lstm = make_lstm(IN, HID, bidirectional=True, batch_first=batch_first)
    ref = torch.nn.LSTM(IN, HID, bidirectional=True, batch_first=batch_first).double()
    x = _padded(_sequences())
    if batch_first:
        x = x.transpose(0, 1)
    packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
    out, _ = lstm(packed)
    expected, _ = ref(packed)
    assert torch.equal(out.batch_sizes, expected.batch_sizes)
    assert torch.equal(out.sorted_indices, expected.sorted_indices)
    assert torch.equal(out.unsorted_indices, expected.unsorted_indices)
    assert out.data.shape == expected.data.shape
