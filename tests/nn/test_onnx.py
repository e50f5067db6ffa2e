"""torch.onnx.export of PeepholeLSTM (nn/onnx_export.py), run by onnxruntime against PyTorch.

Layers whose options ONNX's LSTM operator expresses export as that operator (one node per layer, both
directions in one); the others as an ONNX Scan over the eager step. onnxruntime's LSTM has no float64
kernel, so float64 goes through onnx's reference evaluator (which ignores sequence_lens and activations:
default options only); everything else is float32 at 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from peephole_lstm import PeepholeLSTM
from peephole_lstm.nn import onnx_export
from peephole_lstm.nn.options import CellOptions

from .helpers import randomize_

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx.export's dynamo exporter needs it

IN, HID = 3, 5
TOL = 1e-5

LSTM_OP = {  # options ONNX's LSTM operator expresses
    "diagonal": dict(),
    "none": dict(peephole="none"),
    "peepholes-fo-no-bias": dict(peephole_gates="fo", bias=False),
    "CIFG": dict(coupled=True),
    "NIAF": dict(input_activation="identity"),
    "NOAF-forget_bias": dict(output_activation="identity", forget_bias=2.0),
    "2layers-bi-batch_first": dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.3),
}
SCAN = {  # options it does not: one ONNX Scan per layer and direction
    "full-proj-clip": dict(peephole="full", proj_size=2, cell_clip=0.5),
    "previous-NIG-NOG": dict(output_peephole="previous", input_gate=False, output_gate=False, peephole_gates="f"),
    "layer_norm-FGR-zoneout-bi": dict(layer_norm=True, gate_recurrence=True, zoneout=0.3, bidirectional=True),
}


def _module(kwargs, seed=0, dtype=torch.float32):
    return randomize_(PeepholeLSTM(IN, HID, **kwargs), seed).to(dtype).eval()


def _export(lstm, x, lengths=None, hx=None, tmp_path=None):
    """Export with dynamic batch and sequence dimensions; returns (onnxruntime session, ONNX op types)."""
    seq, batch = Dim("seq"), Dim("batch")
    time_dim, batch_dim = (1, 0) if lstm.batch_first else (0, 1)
    dims = {"input": {time_dim: seq, batch_dim: batch}}
    args, kwargs = (x,), {}
    if hx is not None:
        args = (x, hx)
        dims["hx"] = ({1: batch}, {1: batch})
    if lengths is not None:
        kwargs["lengths"] = lengths
        dims["lengths"] = {0: batch}
    program = torch.onnx.export(lstm, args, kwargs=kwargs, dynamic_shapes=dims, dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    ops = [node.op_type for node in program.model.graph]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), ops


def _run(session, *inputs):
    return session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs)})


def _assert_close(got, want, tol=TOL):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=tol, atol=tol)


def test_onnxruntime_input_forget_derives_the_forget_gate():
    """What onnxruntime's `input_forget=1` computes: f = 1 - i, the opposite of CIFG's i = 1 - f. This is
    why the exporter does not use the attribute (nn/onnx_export.py); if this test starts failing,
    onnxruntime changed its reading of the spec."""
    from onnx import TensorProto, helper

    T, B, H = 4, 2, 3
    rng = np.random.default_rng(0)
    feeds = {"X": rng.standard_normal((T, B, 2)), "W": rng.standard_normal((1, 4 * H, 2)),
             "R": rng.standard_normal((1, 4 * H, H)), "B": rng.standard_normal((1, 8 * H)),
             "P": rng.standard_normal((1, 3 * H))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y"], hidden_size=H, input_forget=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                                            for k, v in feeds.items()],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    def reference(derive_forget: bool):
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        W, R, Bias, P = feeds["W"][0], feeds["R"][0], feeds["B"][0], feeds["P"][0]
        h = c = np.zeros((B, H), np.float32)
        outs = []
        for x in feeds["X"]:
            zi, zo, zf, zc = np.split(x @ W.T + h @ R.T + Bias[:4 * H] + Bias[4 * H:], 4, -1)
            i, f = sig(zi + P[:H] * c), sig(zf + P[2 * H:] * c)
            i, f = (i, 1 - i) if derive_forget else (1 - f, f)
            c = f * c + i * np.tanh(zc)
            h = sig(zo + P[H:2 * H] * c) * np.tanh(c)
            outs.append(h)
        return np.stack(outs)

    np.testing.assert_allclose(y[:, 0], reference(derive_forget=True), rtol=1e-5, atol=1e-5)
    assert np.abs(y[:, 0] - reference(derive_forget=False)).max() > 1e-2


@pytest.mark.slow  # torch.onnx.export (Dynamo) and onnxruntime
@pytest.mark.parametrize("kwargs", LSTM_OP.values(), ids=LSTM_OP.keys())
def test_expressible_options_export_as_the_lstm_operator(kwargs, tmp_path):
    lstm = _module(kwargs)
    shape = (3, 7, IN) if lstm.batch_first else (7, 3, IN)
    session, ops = _export(lstm, torch.randn(shape), tmp_path=tmp_path)
    assert ops.count("LSTM") == lstm.num_layers and "Scan" not in ops
    x = torch.randn((5, 11, IN) if lstm.batch_first else (11, 5, IN))  # other length and batch than traced
    out, (h_n, c_n) = lstm(x)
    _assert_close(_run(session, x), (out, h_n, c_n))


@pytest.mark.slow  # torch.onnx.export (Dynamo) and onnxruntime
def test_initial_state_and_variable_lengths_match_packed_sequences(tmp_path):
    """Lengths become the operator's sequence_lens; the reference is the same batch as a PackedSequence."""
    lstm = _module(dict(num_layers=2, bidirectional=True))
    n = lstm.num_layers * lstm.num_directions
    hx = (torch.randn(n, 3, HID), torch.randn(n, 3, HID))
    session, ops = _export(lstm, torch.randn(7, 3, IN), torch.tensor([7, 2, 5]), hx, tmp_path)
    assert ops.count("LSTM") == 2
    T, lengths = 9, torch.tensor([9, 1, 4, 6])
    x, hx = torch.randn(T, 4, IN), (torch.randn(n, 4, HID), torch.randn(n, 4, HID))
    packed_out, (h_n, c_n) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    out = pad_packed_sequence(packed_out, total_length=T)[0]
    _assert_close(_run(session, x, *hx, lengths), (out, h_n, c_n))


@pytest.mark.slow  # torch.onnx.export (Dynamo) and onnxruntime
@pytest.mark.parametrize("kwargs", SCAN.values(), ids=SCAN.keys())
def test_other_options_export_as_a_scan_loop(kwargs, tmp_path):
    lstm = _module(kwargs)
    assert onnx_export.unsupported(lstm.options[0]) is not None
    session, ops = _export(lstm, torch.randn(7, 3, IN), torch.tensor([7, 2, 5]), tmp_path=tmp_path)
    assert "LSTM" not in ops and ops.count("Scan") == lstm.num_directions
    T, lengths = 10, torch.tensor([10, 3, 6, 1])
    x = torch.randn(T, 4, IN)
    packed_out, (h_n, c_n) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out = pad_packed_sequence(packed_out, total_length=T)[0]
    _assert_close(_run(session, x, lengths), (out, h_n, c_n))


@pytest.mark.slow  # torch.onnx.export (Dynamo) and onnxruntime
def test_float64_weights_order_with_the_reference_evaluator(tmp_path):
    """onnxruntime's LSTM has no float64 kernel; onnx's reference evaluator does (without sequence_lens
    and activations, so default options): the re-ordered weights are exact there."""
    from onnx.reference import ReferenceEvaluator

    lstm = _module(dict(), dtype=torch.float64)
    x = torch.randn(6, 2, IN, dtype=torch.float64)
    program = torch.onnx.export(lstm, (x,), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    got = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})
    out, (h_n, c_n) = lstm(x)
    _assert_close(got, (out, h_n, c_n), 1e-12)


def test_unsupported_names_the_option():
    def reason(**kwargs):
        return onnx_export.unsupported(CellOptions(IN, HID, **kwargs))

    assert reason() is None and reason(coupled=True) is None and reason(peephole="none", proj_size=0) is None
    assert "peephole='full'" in reason(peephole="full")
    assert "proj_size=2" in reason(proj_size=2)
    assert "cell_clip=0.5" in reason(cell_clip=0.5)
    assert "zoneout=0.1" in reason(zoneout=0.1)
    assert "input_gate=False" in reason(input_gate=False, peephole_gates="fo")
    assert "output_peephole='previous'" in reason(output_peephole="previous")
    assert reason(output_peephole="previous", peephole_gates="if") is None  # o has no peephole: nothing to read
