"""The fused kernels as PyTorch operators (nn/ops.py), and what torch.compile, torch.export and TorchScript
make of a layer that uses them: one operator per layer and direction, no unrolled time loop, no
recompilation for a new length or batch size, and the eager numbers."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._dynamo.utils import counters
from torch.export import Dim

from peephole_lstm.nn import fused
from peephole_lstm.nn.cell import STEP_WEIGHTS

from .helpers import gradients, make_cell, make_lstm, weighted_sum
from .test_fused import kernel

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script.*` is deprecated:DeprecationWarning")

KERNELS = ["torch"] + (["cpp"] if fused.extension_available() else [])
FORWARD = torch.ops.peephole_lstm.sequence_forward.default
BACKWARD = torch.ops.peephole_lstm.sequence_backward.default
# Each set of options changes what the kernels save or compute: peephole layouts, the gates, the kept
# pre-clip cell (clip, zoneout) and the projection.
OP_OPTIONS = {
    "none": dict(peephole="none"),
    "diagonal": dict(),
    "full-previous": dict(peephole="full", output_peephole="previous", peephole_gates="fo"),
    "CIFG-full": dict(peephole="full", coupled=True),
    "NIG-NOG-identity": dict(input_gate=False, output_gate=False, peephole_gates="f", input_activation="identity"),
    "proj-clip-zoneout": dict(proj_size=2, peephole="full", cell_clip=0.3, zoneout=0.2),
}


def _op_inputs(kwargs, lengths: bool, seed: int = 0):
    """Arguments of sequence_forward for the first layer of a random float64 module with these options."""
    lstm = make_lstm(3, 4, seed=seed, **kwargs)
    opts = lstm.options[0]
    gen = torch.Generator().manual_seed(seed)
    T, B = 5, 3

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    xz = leaf(T, B, len(opts.blocks) * opts.hidden_size)
    w_hh, w_ch, _, w_hr = (None if w is None else w.detach().clone().requires_grad_()
                           for w in lstm._weights(STEP_WEIGHTS, 0, 0)[:4])
    lens = torch.tensor([5, 2, 4]) if lengths else None
    return (xz, leaf(B, opts.output_size), leaf(B, opts.hidden_size), w_hh, w_ch, w_hr, lens, *fused.config(opts))


# opcheck traces each call through fake tensors and AOT autograd, a second or more per case: the fast lane
# (docs/testing.md) keeps the C++ kernel at full length with the options that save the most (projection,
# pre-clip cell, zoneout), the full suite every combination.
LANE_OP_OPTIONS = ("proj-clip-zoneout",)


@pytest.mark.parametrize("name", [k if k == "cpp" else pytest.param(k, marks=pytest.mark.slow) for k in KERNELS])
@pytest.mark.parametrize("lengths", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full-length", "lengths"])
@pytest.mark.parametrize("kwargs", [v if k in LANE_OP_OPTIONS else pytest.param(v, marks=pytest.mark.slow)
                                    for k, v in OP_OPTIONS.items()], ids=OP_OPTIONS.keys())
def test_opcheck(kwargs, lengths, name):
    """Schema (no hidden mutation or aliasing), autograd registration, fake kernels (against the real
    output shapes) and AOT dispatch with dynamic shapes (gradients against eager), for both operators."""
    args = _op_inputs(kwargs, lengths)
    with kernel(name):
        torch.library.opcheck(FORWARD, args)
        out = FORWARD(*args)
        gen = torch.Generator().manual_seed(1)
        grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out[:3]]
        saved = [o.detach() for o in out[3:]]
        weights = [None if w is None else w.detach() for w in args[3:6]]
        for grad_out, grad_hn, grad_cn in (grads, (grads[0], None, None), (None, grads[1], grads[2])):
            torch.library.opcheck(BACKWARD, (grad_out, grad_hn, grad_cn, *saved, *weights, *args[6:]))


@pytest.mark.parametrize("name", KERNELS)
def test_operator_double_backward_is_exact(name):
    """The operator's own autograd formula (not only the eager lane the layer runs) recomputes with the
    eager ops when a graph of the gradient is asked for."""
    xz, h0, c0, w_hh, w_ch, w_hr, lens, *config = _op_inputs(dict(peephole="full", proj_size=2), lengths=True)

    def f(xz, h0, c0, w_hh, w_ch, w_hr):
        return FORWARD(xz, h0, c0, w_hh, w_ch, w_hr, lens, *config)[:3]

    with kernel(name):
        assert torch.autograd.gradgradcheck(f, (xz, h0, c0, w_hh, w_ch, w_hr), fast_mode=True, atol=1e-6, rtol=1e-5)


class _Head(torch.nn.Module):
    """A layer with a linear head: what inductor can fuse around the operator."""

    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = make_lstm(3, 4, **kwargs)
        self.head = torch.nn.Linear(self.lstm.num_directions * self.lstm.options[0].output_size, 2).double()

    def forward(self, x):
        out, (h_n, c_n) = self.lstm(x)
        return self.head(out), h_n, c_n


class _Capture:
    """A torch.compile backend (AOT autograd, no code generation) that keeps the forward and backward graphs."""

    def __init__(self):
        self.forward, self.backward = [], []
        self.backend = aot_autograd(fw_compiler=self._keep(self.forward), bw_compiler=self._keep(self.backward))

    @staticmethod
    def _keep(graphs):
        def compiler(gm, example_inputs):
            graphs.append(gm)
            return make_boxed_func(gm.forward)
        return compiler


def _count(gm, op) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == op)


def _train_values(model, x):
    values = model(x)
    return list(values) + list(gradients(weighted_sum(values), [*model.parameters()]))


@pytest.mark.slow  # Dynamo tracing
def test_compile_keeps_one_operator_per_layer_and_direction_without_recompiling():
    torch._dynamo.reset()
    counters.clear()
    model = _Head(num_layers=2, bidirectional=True, peephole="full", proj_size=2)
    capture = _Capture()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=capture.backend)
    for T, B in [(5, 2), (9, 3), (17, 6)]:
        x = torch.randn(T, B, 3, dtype=torch.float64)
        got, want = _train_values(compiled, x), _train_values(model, x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every length and batch size
    assert len(capture.forward) == len(capture.backward) == 1
    # 2 layers x 2 directions: four operator calls forward and four backward, no time loop in the graph.
    assert _count(capture.forward[0], FORWARD) == 4
    assert _count(capture.backward[0], BACKWARD) == 4
    torch._dynamo.reset()


@pytest.mark.slow  # Dynamo tracing
def test_compiled_graph_does_not_grow_with_the_sequence_length():
    """Static shapes, two lengths: the same number of nodes (the eager per-step loop would unroll)."""
    sizes = []
    for T in (4, 40):
        torch._dynamo.reset()
        capture = _Capture()
        model = _Head()
        torch.compile(model, fullgraph=True, dynamic=False, backend=capture.backend)(
            torch.randn(T, 2, 3, dtype=torch.float64))[0].sum().backward()
        sizes.append((len(capture.forward[0].graph.nodes), len(capture.backward[0].graph.nodes)))
    assert sizes[0] == sizes[1], sizes
    torch._dynamo.reset()


@pytest.mark.slow  # Inductor generates and compiles C++
def test_inductor_train_step_matches_eager_for_new_lengths_and_batch_sizes():
    """The default backend (inductor generates code around the operators), float32, as users compile."""
    torch._dynamo.reset()
    counters.clear()
    model = _Head(peephole="diagonal").float()
    compiled = torch.compile(model, dynamic=True)
    # (No batch of 3: duck sizing would give it the input size's symbol, and specialize it to 3.)
    for T, B in [(6, 2), (11, 5)]:
        x = torch.randn(T, B, 3)
        for g, w in zip(_train_values(compiled, x), _train_values(model, x)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


@pytest.mark.slow  # Dynamo tracing
def test_export_has_one_operator_per_layer_and_direction_and_dynamic_dims():
    lstm = make_lstm(3, 4, num_layers=2, bidirectional=True, batch_first=True, peephole="full").eval()
    dims = {"input": {0: Dim("batch", min=2), 1: Dim("seq", min=2)}}
    exported = torch.export.export(lstm, (torch.randn(3, 5, 3, dtype=torch.float64),), dynamic_shapes=dims)
    assert _count(exported.graph_module, FORWARD) == 4
    for B, T in [(2, 7), (6, 30)]:
        x = torch.randn(B, T, 3, dtype=torch.float64)
        got = exported.module()(x)
        out, (h_n, c_n) = lstm(x)
        for g, w in zip((got[0], *got[1]), (out, h_n, c_n)):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    # Static export at two lengths: the node count does not depend on T.
    counts = [len(torch.export.export(lstm, (torch.randn(3, T, 3, dtype=torch.float64),)).graph.nodes)
              for T in (4, 40)]
    assert counts[0] == counts[1], counts


@pytest.mark.slow  # Dynamo tracing
def test_scripted_cell_and_compiled_layer_match_eager():
    cell = make_cell(3, 4, peephole="full", coupled=True)
    lstm = make_lstm(3, 4, peephole="full", coupled=True)
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    scripted = torch.jit.script(cell)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    state = None
    for x_t in x:
        state = scripted(x_t, state)
    torch._dynamo.reset()
    out, (h_n, c_n) = torch.compile(lstm, fullgraph=True, backend=_Capture().backend)(x)
    want_out, (want_h, want_c) = lstm(x)
    for g, w in ((state[0], want_h[0]), (state[1], want_c[0]), (out, want_out)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
