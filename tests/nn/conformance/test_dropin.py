"""What a user porting code from torch.nn.LSTM relies on beyond the numbers: factory kwargs (device,
dtype, meta), nn.LSTM's initial weights for the same seed, float16 on CPU, `all_weights` and the
weight-norm / parametrization hooks that read `_flat_weights`."""
from __future__ import annotations

import io

import pytest
import torch
from torch.nn.utils import parametrizations

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell

OPTIONS = [
    dict(peephole="none"),
    dict(peephole="diagonal"),
    dict(peephole="full", proj_size=2),
    dict(layer_norm=True, gate_recurrence=True, coupled=True),
]
IDS = ["none", "diagonal", "full-proj", "ln-fgr-cifg"]
LAYER = dict(num_layers=2, bidirectional=True)


@pytest.mark.parametrize("kwargs", OPTIONS, ids=IDS)
def test_factory_kwargs_place_every_parameter(kwargs):
    for module in (PeepholeLSTM(3, 4, **LAYER, **kwargs, device="meta", dtype=torch.float64),
                   PeepholeLSTMCell(3, 4, **kwargs, device="meta", dtype=torch.float64)):
        params = dict(module.named_parameters())
        assert params and all(p.is_meta and p.dtype == torch.float64 for p in params.values()), params
    with torch.device("meta"):  # the default-device context, as torch.nn.LSTM honours it
        assert all(p.is_meta for p in PeepholeLSTM(3, 4, **kwargs).parameters())


@pytest.mark.parametrize("kwargs", OPTIONS, ids=IDS)
def test_meta_module_materialises_and_runs(kwargs):
    """The usual deferred-init recipe: build on meta, to_empty() on the real device, reset_parameters()."""
    lstm = PeepholeLSTM(3, 4, **LAYER, **kwargs, device="meta").to_empty(device="cpu")
    lstm.reset_parameters()
    torch.manual_seed(0)
    reference = PeepholeLSTM(3, 4, **LAYER, **kwargs)
    torch.manual_seed(0)
    lstm.reset_parameters()
    for (name, a), b in zip(lstm.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    out, _ = lstm(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 2 * kwargs.get("proj_size", 4)) and torch.isfinite(out).all()


def test_dtype_kwarg_runs_in_that_dtype():
    lstm = PeepholeLSTM(3, 4, peephole="full", dtype=torch.float64)
    out, (h, c) = lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64
    cell = PeepholeLSTMCell(3, 4, dtype=torch.float64)
    assert cell(torch.randn(2, 3, dtype=torch.float64))[0].dtype == torch.float64


LSTM_CONFIGS = [dict(), dict(num_layers=3), dict(num_layers=2, bidirectional=True, proj_size=2),
                dict(bias=False, num_layers=2, batch_first=True)]


@pytest.mark.parametrize("kwargs", LSTM_CONFIGS, ids=str)
def test_same_seed_gives_nn_lstm_initial_weights(kwargs):
    """peephole='none', forget_bias=0: the state_dict nn.LSTM draws for the same seed, tensor for tensor."""
    torch.manual_seed(123)
    expected = torch.nn.LSTM(3, 4, **kwargs).state_dict()
    torch.manual_seed(123)
    got = PeepholeLSTM(3, 4, peephole="none", forget_bias=0.0, **kwargs).state_dict()
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # and the generator is left where nn.LSTM leaves it, so later draws (a head, dropout) line up too
    torch.manual_seed(123)
    torch.nn.LSTM(3, 4, **kwargs)
    after_ref = torch.rand(3)
    torch.manual_seed(123)
    PeepholeLSTM(3, 4, peephole="none", forget_bias=0.0, **kwargs)
    assert torch.equal(torch.rand(3), after_ref)


@pytest.mark.parametrize("bias", [True, False])
def test_same_seed_gives_nn_lstm_cell_initial_weights(bias):
    torch.manual_seed(7)
    expected = torch.nn.LSTMCell(3, 4, bias=bias).state_dict()
    torch.manual_seed(7)
    got = PeepholeLSTMCell(3, 4, bias=bias, peephole="none", forget_bias=0.0).state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_default_forget_bias_shifts_only_the_forget_block():
    """The default forget_bias=1 is the one difference in the initial weights: +1 on bias_ih's f rows."""
    torch.manual_seed(5)
    expected = torch.nn.LSTM(3, 4, num_layers=2).state_dict()
    torch.manual_seed(5)
    got = PeepholeLSTM(3, 4, num_layers=2, peephole="none").state_dict()
    for name in expected:
        delta = got[name] - expected[name]
        if name.startswith("bias_ih"):
            torch.testing.assert_close(delta[4:8], torch.ones(4))  # blocks i, f, g, o: f is rows H..2H
            delta[4:8] = 0
        assert torch.equal(delta, torch.zeros_like(delta)), name


def test_peepholes_draw_after_nn_lstm_weights():
    """With peepholes each layer draws nn.LSTM's tensors first, then weight_ch: layer 0's LSTM weights
    still equal nn.LSTM's for the same seed."""
    torch.manual_seed(9)
    expected = torch.nn.LSTM(3, 4, num_layers=2).state_dict()
    torch.manual_seed(9)
    got = PeepholeLSTM(3, 4, num_layers=2, peephole="diagonal", forget_bias=0.0).state_dict()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(got[name], expected[name]), name
    bound = 1 / 4 ** 0.5
    assert got["weight_ch_l0"].abs().max() <= bound and not torch.equal(got["weight_ih_l1"], expected["weight_ih_l1"])


@pytest.mark.parametrize("kwargs", OPTIONS[:3], ids=IDS[:3])
def test_float16_on_cpu(kwargs):
    """nn.LSTM runs float16 on CPU; so does every path here (the fused one on its PyTorch twin)."""
    torch.manual_seed(0)
    lstm64 = PeepholeLSTM(8, 16, **LAYER, **kwargs).double()
    half = PeepholeLSTM(8, 16, **LAYER, **kwargs).half()
    half.load_state_dict(lstm64.state_dict())
    x = torch.randn(20, 3, 8, dtype=torch.float64)
    expected = lstm64(x)[0]
    for backend in ("auto", "eager"):
        half.backend = backend
        xh = x.half().requires_grad_()
        out, (h, c) = half(xh)
        assert out.dtype == h.dtype == c.dtype == torch.float16
        torch.testing.assert_close(out.double(), expected, atol=5e-3, rtol=0)
        out.float().sum().backward()
        assert xh.grad.dtype == torch.float16 and torch.isfinite(xh.grad).all()
        assert all(p.grad.dtype == torch.float16 for p in half.parameters())
        half.zero_grad()
    assert half.last_path == "eager"
    half.backend = "auto"
    half(x.half())
    assert half.last_path == "fused-torch"


def test_float16_matches_nn_lstm_float16():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(8, 16, **LAYER).half()
    ours = PeepholeLSTM(8, 16, **LAYER, peephole="none").half()
    ours.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(20, 3, 8).half()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=2e-3, rtol=0)
    cell_ref = torch.nn.LSTMCell(8, 16).half()
    cell = PeepholeLSTMCell(8, 16, peephole="none").half()
    cell.load_state_dict(cell_ref.state_dict())
    torch.testing.assert_close(cell(x[0])[0], cell_ref(x[0])[0], atol=2e-3, rtol=0)


def test_all_weights_is_nn_lstms_structure():
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    ours = PeepholeLSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, peephole="none")
    assert ours._all_weights == ref._all_weights
    assert ours._flat_weights_names == ref._flat_weights_names
    for got, expected in zip(ours.all_weights, ref.all_weights):
        assert [w.shape for w in got] == [w.shape for w in expected]
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    # the library's own weights are listed after nn.LSTM's, per layer and direction
    diag = PeepholeLSTM(3, 4, bidirectional=True, layer_norm=True)
    assert diag._all_weights[1][:5] == ref._all_weights[1][:4] + ["weight_ch_l0_reverse"]
    assert len(diag.all_weights) == 2 and all(isinstance(w, torch.nn.Parameter) for w in diag.all_weights[1])


def test_all_weights_copy_loop_from_pytorchs_tests_transfers_weights():
    """PyTorch's own tests copy weights between RNNs with `for x, y in zip(a.all_weights, b.all_weights)`."""
    ref = torch.nn.LSTM(3, 4, num_layers=2)
    ours = PeepholeLSTM(3, 4, num_layers=2, peephole="none")
    for x_layer, y_layer in zip(ours.all_weights, ref.all_weights):
        for x, y in zip(x_layer, y_layer):
            x.data.copy_(y.data)
    inp = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(inp)[0], ref(inp)[0])


@pytest.mark.parametrize("name", ["weight_hh_l0", "weight_ih_l1", "weight_hr_l0"])
def test_parametrized_weight_norm_matches_nn_lstm(name):
    """torch.nn.utils.parametrizations.weight_norm replaces the weight by a computed tensor; the layer
    must read it (and _flat_weights list it) exactly as nn.LSTM does."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)
    ours = PeepholeLSTM(3, 4, num_layers=2, proj_size=2, peephole="none")
    ours.load_state_dict(ref.state_dict(), strict=False)
    for module in (ref, ours):
        parametrizations.weight_norm(module, name)
        with torch.no_grad():
            getattr(module.parametrizations, name).original0.mul_(0.5)  # a different norm: the weight changes
    x = torch.randn(5, 2, 3)
    out_ref, out = ref(x)[0], ours(x)[0]
    torch.testing.assert_close(out, out_ref)
    out.sum().backward()
    out_ref.sum().backward()
    for module in (ref, ours):
        assert not isinstance(dict(zip(module._flat_weights_names, module._flat_weights))[name], torch.nn.Parameter)
    g_ref = getattr(ref.parametrizations, name).original1.grad
    torch.testing.assert_close(getattr(ours.parametrizations, name).original1.grad, g_ref)



SCRIPT_OPTIONS = [
    dict(peephole="none"),
    dict(peephole="full", num_layers=2, bidirectional=True, proj_size=2, batch_first=True),
    dict(layer_norm=True, gate_recurrence=True, coupled=True, num_layers=2, cell_clip=0.5, zoneout=0.2),
    dict(input_gate=False, output_activation="identity", peephole_gates="fo", output_peephole="previous", bias=False),
]
SCRIPT_IDS = ["none", "full-2layer-bi-proj-bf", "ln-fgr-cifg-clip-zoneout", "nig-noaf-fo-prev-nobias"]
jit_deprecated = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@jit_deprecated
# Scripting compiles each new module: the fast lane leaves out the plain case, the others cover it.
@pytest.mark.parametrize("kwargs", [pytest.param(SCRIPT_OPTIONS[0], marks=pytest.mark.slow), *SCRIPT_OPTIONS[1:]],
                         ids=SCRIPT_IDS)
def test_torch_jit_script_computes_what_eager_computes(kwargs):
    """torch.jit.script(PeepholeLSTM) runs the per-step loop: the eager backend's numbers, values and
    gradients, batched and unbatched, with and without an initial state."""
    lstm = PeepholeLSTM(3, 4, **kwargs).double().eval()
    scripted = torch.jit.script(lstm)
    assert list(scripted.state_dict()) == list(lstm.state_dict())
    lstm.backend = "eager"  # the reference: exactly the ops the scripted loop runs
    n = lstm.num_layers * lstm.num_directions
    out_size = kwargs.get("proj_size", 4)
    for batched in (True, False):
        x = torch.randn(2, 5, 3, dtype=torch.float64) if kwargs.get("batch_first") else torch.randn(5, 2, 3, dtype=torch.float64)
        if not batched:
            x = x[0] if kwargs.get("batch_first") else x[:, 0]
        shape = (n, 2) if batched else (n,)
        for hx in (None, (torch.randn(*shape, out_size, dtype=torch.float64), torch.randn(*shape, 4, dtype=torch.float64))):
            results = []
            for module in (lstm, scripted):
                module.zero_grad()
                out, (h, c) = module(x, hx)
                (out.sum() + h.square().sum() + c.sum()).backward()
                results.append([out, h, c] + [p.grad.clone() for p in lstm.parameters()])
            for a, b in zip(*results):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@jit_deprecated
def test_scripted_model_saves_loads_and_trains_the_same_weights():
    from .scripted_net import Net

    torch.manual_seed(0)
    net = Net(num_layers=2, bidirectional=True, peephole="diagonal")
    scripted = torch.jit.script(net)
    # Scripting a container leaves the eager model as it was (same module, same fast path).
    assert type(net.lstm) is PeepholeLSTM
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(scripted(x), net(x))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x), net(x))
    # The scripted module holds the eager module's parameters, not copies: an optimiser step on one is
    # seen by the other, as for a scripted nn.LSTM.
    scripted(x).sum().backward()
    torch.optim.SGD(scripted.parameters(), lr=0.5).step()
    assert net.lstm.weight_ih_l0.grad is not None
    torch.testing.assert_close(scripted(x), net(x))
    net.double()
    torch.testing.assert_close(scripted(x.double()), net(x.double()))


@jit_deprecated
def test_scripted_layer_checks_shapes():
    scripted = torch.jit.script(PeepholeLSTM(3, 4))
    with pytest.raises(Exception, match="expected input of 3 features"):
        scripted(torch.randn(5, 2, 7))
    with pytest.raises(Exception, match="Expected sequence length to be larger than 0"):
        scripted(torch.randn(0, 2, 3))
    with pytest.raises(Exception, match=r"expected hx = \(h_0 of shape \(1, 2, 4\)"):
        scripted(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))


@jit_deprecated
def test_scripted_layer_trains_with_dropout_and_zoneout():
    torch.manual_seed(0)
    scripted = torch.jit.script(PeepholeLSTM(3, 4, num_layers=2, dropout=0.5, zoneout=0.3).train())
    x = torch.randn(5, 2, 3)
    first, second = scripted(x)[0], scripted(x)[0]
    assert not torch.equal(first, second)  # fresh masks each call
    first.sum().backward()


@pytest.mark.parametrize("kernel", ["cpp", "torch"])
def test_torch_func_transforms_and_batched_gradients(kernel):
    """nn.LSTM works under torch.func (grad, jacrev, vmap) and with batched gradients (gradcheck's batched
    check, jacobian(vectorize=True)). The fused kernels cannot see functorch's tensors: under a transform
    the layer runs the eager ops, and a backward given batched gradients recomputes with them."""
    from torch.func import functional_call, grad, jacrev, vmap

    from peephole_lstm.nn import fused

    if kernel == "cpp" and not fused.extension_available():
        pytest.skip("the C++ kernel is not built")
    previous = fused.set_extension_enabled(kernel == "cpp")
    try:
        torch.manual_seed(0)
        lstm = PeepholeLSTM(2, 2, peephole="full", bidirectional=True, proj_size=1).double()
        x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
        expected = torch.autograd.functional.jacobian(lambda x: lstm(x)[0], x)
        assert lstm.last_path == f"fused-{kernel}"
        torch.testing.assert_close(torch.autograd.functional.jacobian(lambda x: lstm(x)[0], x, vectorize=True), expected)
        assert torch.autograd.gradcheck(lambda x: lstm(x)[0], (x,), check_batched_grad=True, fast_mode=True)
        torch.testing.assert_close(jacrev(lambda x: lstm(x)[0])(x), expected)
        assert lstm.last_path == "eager (torch.func transform)"
        params = {k: v.detach() for k, v in lstm.named_parameters()}
        g = grad(lambda p: functional_call(lstm, p, (x,))[0].square().sum())(params)
        lstm.zero_grad()
        lstm(x)[0].square().sum().backward()
        for name, p in lstm.named_parameters():
            torch.testing.assert_close(g[name], p.grad)
        xs = torch.randn(2, 3, 2, 2, dtype=torch.float64)
        torch.testing.assert_close(vmap(lambda xi: lstm(xi)[0])(xs), torch.stack([lstm(xi)[0] for xi in xs]))
    finally:
        fused.set_extension_enabled(previous)


def test_docstring_examples_run():
    """help(PeepholeLSTM) and help(PeepholeLSTMCell) are the reference; their examples must work."""
    import doctest

    from peephole_lstm.nn import cell, layer

    globs = {"torch": torch, "PeepholeLSTM": PeepholeLSTM, "PeepholeLSTMCell": PeepholeLSTMCell}
    for obj in (layer.PeepholeLSTM, cell.PeepholeLSTMCell):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in doctest.DocTestFinder().find(obj, globs=dict(globs)):
            runner.run(test)
        result = runner.summarize(verbose=False)
        assert result.attempted > 0 and result.failed == 0, obj


@jit_deprecated
def test_scripted_layer_refuses_packed_input():
    """A documented difference (docs/reference.md): the scripted forward is compiled for tensors only,
    where nn.LSTM's has a PackedSequence overload (usable from a scripted model holding it: a scripted
    nn.LSTM on its own has no callable forward, only its two overloads)."""
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 3), torch.randn(2, 3)])
    scripted = torch.jit.script(PeepholeLSTM(3, 4))
    with pytest.raises(RuntimeError, match="Tensor"):
        scripted(packed)
    PeepholeLSTM(3, 4)(packed)  # the Python module takes it
    assert scripted(torch.ones(2, 1, 3))[0].shape == (2, 1, 4)
    assert not hasattr(torch.jit.script(torch.nn.LSTM(3, 4)), "forward")  # only forward__0 / forward__1


def test_autocast_on_the_per_step_path_autocasts_op_by_op():
    """A documented difference: off the fused path (backend="eager", layer_norm, gate_recurrence, zoneout in
    training) autocast applies per op, the float32 state promotes the result, and the output is float32
    where nn.LSTM (and the fused path) return the autocast dtype."""
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert PeepholeLSTM(3, 4)(x)[0].dtype == torch.bfloat16
        out = PeepholeLSTM(3, 4, backend="eager")(x)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
