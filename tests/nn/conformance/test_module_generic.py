"""PyTorch's generic module tests (test/test_modules.py, class TestModule) for nn.LSTM and nn.LSTMCell,
with the inputs common_modules.py gives those two (module_inputs_torch_nn_LSTM / _LSTMCell and
module_error_inputs_torch_nn_RNN_GRU / _LSTMCell), CPU only.

The test bodies keep upstream's assertions; what changes is plumbing: pytest parametrisation instead of
the @modules decorator, `impl` instead of module_info.module_cls, and torch.testing.assert_close, whose
defaults are TestCase.assertEqual's for float tensors. Upstream torch.testing._internal needs the
expecttest package, so nothing is imported from it; the sample lists are transcribed below.
"""
from __future__ import annotations

import io
import pickle
from copy import deepcopy
from functools import partial
from itertools import product

import pytest
import torch
from torch.testing import make_tensor
from torch.testing._utils import freeze_rng_state
from torch.utils._pytree import tree_flatten, tree_unflatten

from peephole_lstm.nn import InputError

DTYPES = [torch.float32, torch.float64]
TRAINING = [False, True]
# Upstream runs every test on float32 and float64. The ones with a backward over every sample run here in
# float64 only, on a quarter of nn.LSTM's 32 samples (alternating every option, with and without hx), to
# keep the suite under a minute: nn.LSTM's float32 path builds a oneDNN primitive per new shape, slow.
SUBSET = [0, 7, 9, 14, 19, 20, 26, 31]


# --- the samples: common_modules.module_inputs_torch_nn_LSTM / _LSTMCell ------------------------------


def _no_batch_dim_reference_lstm(m, *args, batch_first):
    """common_modules.no_batch_dim_reference_lstm: the unbatched call must equal a batch of one."""
    inp, h = (args[0], None) if len(args) == 1 else (args[0], (args[1][0].unsqueeze(1), args[1][1].unsqueeze(1)))
    batch_dim = 0 if batch_first else 1
    with freeze_rng_state():
        output = m(inp.unsqueeze(batch_dim), h)
    return output[0].squeeze(batch_dim), (output[1][0].squeeze(1), output[1][1].squeeze(1))


def _no_batch_dim_reference_lstmcell(m, *args):
    """common_modules.no_batch_dim_reference_lstmcell."""
    inp, (h, c) = args
    with freeze_rng_state():
        output = m(inp.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
    return output[0].squeeze(0), output[1].squeeze(0)


def lstm_samples(dtype, requires_grad=False):
    """(constructor kwargs, forward args, reference) for every sample upstream gives nn.LSTM: 2 layers,
    every combination of bias, batch_first, bidirectional and proj_size, unbatched, without and with hx."""
    make = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad)
    samples = []
    for bias, batch_first, bidirectional, proj_size in product((False, True), (False, True), (False, True), (0, 2)):
        kwargs = dict(input_size=2, hidden_size=3, num_layers=2, proj_size=proj_size, batch_first=batch_first,
                      bias=bias, bidirectional=bidirectional)
        reference = partial(_no_batch_dim_reference_lstm, batch_first=batch_first)
        samples.append((kwargs, (make((2, 2)),), reference))
        n = 4 if bidirectional else 2
        hx = (make((n, proj_size or 3)), make((n, 3)))
        samples.append((kwargs, (make((3, 2)), hx), reference))
    return samples


def cell_samples(dtype, requires_grad=False):
    make = partial(make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad)
    return [
        (dict(input_size=5, hidden_size=10), (make(5), (make(10), make(10))), _no_batch_dim_reference_lstmcell),
        (dict(input_size=5, hidden_size=10, bias=True), (make(5), (make(10), make(10))),
         _no_batch_dim_reference_lstmcell),
    ]


KINDS = ["LSTM", "LSTMCell"]


def _samples(kind, dtype, requires_grad=False, subset=False):
    if kind == "LSTMCell":
        return cell_samples(dtype, requires_grad)
    samples = lstm_samples(dtype, requires_grad)
    return [samples[i] for i in SUBSET] if subset else samples


def _module_cls(impl, kind):
    return impl.lstm if kind == "LSTM" else impl.cell


def _assert_parameters_and_buffers_are(module, device, dtype):
    """TestModule._assert_module_parameters_and_buffer_are."""
    for name, item in list(module.named_parameters()) + list(module.named_buffers()):
        assert item.device == torch.device(device), name
        if item.dtype.is_floating_point:
            assert item.dtype == dtype, name


# --- TestModule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", TRAINING, ids=["eval", "train"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_forward(impl, kind, dtype, training):
    for kwargs, args, reference in _samples(kind, dtype, subset=dtype == torch.float32):
        with freeze_rng_state():
            m = _module_cls(impl, kind)(**kwargs)
            m.to("cpu").to(dtype)
            m.train(training)
            outputs = m(*args)
            torch.testing.assert_close(outputs, reference(m, *args))
            # the dtype methods convert every parameter and the module still runs
            {torch.float32: m.float, torch.float64: m.double}[dtype]()
            m(*args)
            _assert_parameters_and_buffers_are(m, "cpu", dtype)


@pytest.mark.parametrize("training", TRAINING, ids=["eval", "train"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_factory_kwargs(impl, kind, dtype, training):
    """Upstream first checks, by mocking Parameter.__new__, that the module creates parameters; both do."""
    for kwargs, _, _ in _samples(kind, dtype):
        m = _module_cls(impl, kind)(**kwargs, device="cpu", dtype=dtype)
        m.train(training)
        assert len(list(m.parameters())) > 0
        _assert_parameters_and_buffers_are(m, "cpu", dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_repr(impl, kind):
    for kwargs, _, _ in _samples(kind, torch.float32):
        m = _module_cls(impl, kind)(**kwargs)
        assert repr(m) and str(m)


@pytest.mark.parametrize("training", TRAINING, ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_pickle(impl, kind, training):
    """torch.save / torch.load of the whole module. weights_only=False: since torch 2.6 torch.load refuses
    any pickled module by default, nn.LSTM included (upstream's test predates that default)."""
    for kwargs, args, _ in _samples(kind, torch.float32, subset=True):
        with freeze_rng_state():
            m = _module_cls(impl, kind)(**kwargs)
            m.train(training)
            output = m(*args)
            buffer = io.BytesIO()
            torch.save(m, buffer)
            buffer.seek(0)
            copy = torch.load(buffer, weights_only=False)
            torch.testing.assert_close(copy(*args), output)
            assert pickle.loads(pickle.dumps(m)) is not None


def test_check_inplace(impl):
    pytest.skip("upstream runs it only for modules with an `inplace` argument; nn.LSTM has none")


def _traverse(obj, func):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse(o, func) for o in obj)
    if isinstance(obj, torch.Tensor):
        return func(obj)
    return obj


def _grads(obj):
    return _traverse(obj, lambda t: t.grad if t.requires_grad else None)


def _zero_grad(obj):
    def zero(t):
        t.grad = None
    _traverse(obj, zero)


def _backward_all(out, grad_out):
    flat_out, _ = tree_flatten(out)
    flat_grad, _ = tree_flatten(grad_out)
    for o, g in zip(flat_out, flat_grad):
        if o.requires_grad:
            o.backward(g, retain_graph=True)


@pytest.mark.parametrize("training", TRAINING, ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_tensors(impl, kind, training, dtype=torch.float64):
    def make_non_contiguous(obj):
        def inner(t):
            out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
            out.requires_grad = t.requires_grad
            return out
        return _traverse(obj, inner)

    for kwargs, args, _ in _samples(kind, dtype, requires_grad=True, subset=True):
        m = _module_cls(impl, kind)(**kwargs)
        m.to("cpu").to(dtype)
        m.train(training)
        for t in tree_flatten(args)[0]:
            t.retain_grad()
        with freeze_rng_state():
            default_output = m(*args)
            grad_output = _traverse(default_output, lambda o: o.clone().detach_().normal_() if o.requires_grad else None)
            _backward_all(default_output, grad_output)
        default_input_grad = deepcopy(_grads(args))
        default_param_grad = deepcopy([p.grad for p in m.parameters()])

        nc_args = make_non_contiguous(args)
        nc_grad_output = make_non_contiguous(grad_output)
        for in_args, g_out in product([args, nc_args], [grad_output, nc_grad_output]):
            _zero_grad(in_args)
            m.zero_grad()
            with freeze_rng_state():
                out = m(*in_args)
                _backward_all(out, deepcopy(g_out))
            torch.testing.assert_close(out, default_output)
            torch.testing.assert_close(_grads(in_args), default_input_grad, atol=1e-4, rtol=0)
            torch.testing.assert_close([p.grad for p in m.parameters()], default_param_grad)


def _gradient_check(impl, kind, training, check, samples, partials):
    """TestModule._test_gradients_helper (float64, CPU: gradcheck_nondet_tol 0): the total derivative
    over the inputs and every parameter, then (`partials`) the inputs and one parameter at a time."""
    all_samples = _samples(kind, torch.float64, requires_grad=True)
    for kwargs, input_args, _ in [all_samples[i] for i in samples]:
        m = _module_cls(impl, kind)(**kwargs)
        m.to("cpu").to(torch.float64)
        m.train(training)
        params = tuple(m.parameters())

        def fn_to_gradcheck(*flat_input_and_params):
            input_and_params = tree_unflatten(flat_input_and_params, flat_spec)
            with freeze_rng_state():
                output = m(*input_and_params[:len(input_args)])
                return tree_flatten(output)[0]

        flat_input, flat_spec = tree_flatten(input_args + params)
        assert check(fn_to_gradcheck, flat_input, nondet_tol=0.0)
        if not partials:
            continue
        old_requires_grad = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad = False
        for p, old in zip(params, old_requires_grad):
            p.requires_grad = old
            flat_input, flat_spec = tree_flatten(input_args + params)
            assert check(fn_to_gradcheck, flat_input, nondet_tol=0.0)
            p.requires_grad = False
        for p, old in zip(params, old_requires_grad):
            p.requires_grad = old


# torch.testing._internal.common_utils.gradcheck / gradgradcheck: batched-grad checks and fast mode on.
_gradcheck = partial(torch.autograd.gradcheck, check_batched_grad=True, fast_mode=True)
_gradgradcheck = partial(torch.autograd.gradgradcheck, check_batched_grad=True, fast_mode=True)

# Upstream checks every sample, the total derivative and then one parameter at a time, in both modes; a
# full second-order check of the biggest sample alone takes 1.4-2.4 s of CPU. Here: the total derivative
# of the SUBSET (both cell samples); the per-parameter checks on one sample (bias, proj_size, hx); for
# gradgrad the total derivative of two samples that between them cover bias, batch_first, bidirectional
# and hx (tests/nn/test_double_backward.py checks every option, proj_size included). All in training
# mode only: these samples have dropout 0, so the two modes compute the same (test_forward runs both).


# gradcheck of the multi-layer LSTM samples takes tens of seconds per implementation: the fast lane
# (docs/testing.md) checks the cell, the full suite both.
GRAD_KINDS = [pytest.param("LSTM", marks=pytest.mark.slow), "LSTMCell"]


@pytest.mark.parametrize("kind", GRAD_KINDS)
def test_grad(impl, kind):
    _gradient_check(impl, kind, True, _gradcheck, SUBSET if kind == "LSTM" else [0, 1], partials=False)
    _gradient_check(impl, kind, True, _gradcheck, [19] if kind == "LSTM" else [0], partials=True)


@pytest.mark.parametrize("kind", GRAD_KINDS)
def test_gradgrad(impl, kind):
    _gradient_check(impl, kind, True, _gradgradcheck, [9, 20] if kind == "LSTM" else [0], partials=False)


@pytest.mark.parametrize("test", ["test_cpu_gpu_parity", "test_multiple_device_transfer"])
def test_cuda_only(impl, test):
    pytest.skip(f"{test} is CUDA-only upstream (onlyCUDA); this suite ports the CPU tests")


@pytest.mark.parametrize("training", TRAINING, ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_memory_format(impl, kind, training, dtype=torch.float64):
    """For 1-D/2-D/3-D inputs upstream's memory formats reduce to contiguous_format (channels_last needs
    4-D): outputs equal and contiguous after .to(memory_format=...) of the module, and so are the grads."""
    for kwargs, args, _ in _samples(kind, dtype, requires_grad=True, subset=True):
        with freeze_rng_state():
            m = _module_cls(impl, kind)(**kwargs)
            m.to("cpu").to(dtype)
            m.train(training)
            desired = m(*args)
            diff_outputs = [t for t in tree_flatten(desired)[0] if t.requires_grad]
            diff_inputs = [t for t in tree_flatten((args, tuple(m.parameters())))[0] if t.requires_grad]
            ref_grad_outputs = [torch.rand_like(t) for t in diff_outputs]
            ref_grads = torch.autograd.grad(diff_outputs, diff_inputs, ref_grad_outputs) if training else None
            for module_format in (torch.preserve_format, torch.contiguous_format):
                m.to(memory_format=module_format)
                outputs = m(*args)
                torch.testing.assert_close(outputs, desired)
                assert all(t.is_contiguous() for t in tree_flatten(outputs)[0])
                if training:
                    outs = [t for t in tree_flatten(outputs)[0] if t.requires_grad]
                    ins = [t for t in tree_flatten((args, tuple(m.parameters())))[0] if t.requires_grad]
                    grads = torch.autograd.grad(outs, ins, ref_grad_outputs)
                    torch.testing.assert_close(grads, ref_grads)
                    assert all(g.is_contiguous() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_if_train_and_eval_modes_differ(impl, kind):
    """Checks a ModuleInfo flag: a forward that reads `training` (fails without it) must belong to a module
    whose train and eval modes differ. Upstream: True for nn.LSTM (dropout), False for nn.LSTMCell. The
    PeepholeLSTMCell's modes differ (zoneout), so its flag would be True."""
    train_and_eval_differ = kind == "LSTM" or not impl.is_torch
    for kwargs, args, _ in _samples(kind, torch.float32):
        m = _module_cls(impl, kind)(**kwargs)
        m.train(True)
        delattr(m, "training")
        try:
            m(*args)
        except AttributeError as e:
            assert "'training'" in str(e)
            assert train_and_eval_differ


@pytest.mark.parametrize("kind", KINDS)
def test_device_ctx_init(impl, kind):
    for kwargs, _, _ in _samples(kind, torch.float32):
        m_cpu = _module_cls(impl, kind)(**kwargs)
        with torch.device("meta"):
            m = _module_cls(impl, kind)(**kwargs)
        for p_meta, p_cpu in zip(m.parameters(), m_cpu.parameters()):
            assert p_meta.is_meta
            assert (p_meta.shape, p_meta.stride(), p_meta.dtype, p_meta.requires_grad) == \
                   (p_cpu.shape, p_cpu.stride(), p_cpu.dtype, p_cpu.requires_grad)


# --- TestModule.test_errors: module_error_inputs_torch_nn_RNN_GRU (LSTM) and _LSTMCell ----------------
# (kind, constructor args, constructor kwargs, forward args or None for a constructor error, error type,
#  upstream's message regex, this library's message regex). nn.LSTM must raise the type with upstream's
# message; PeepholeLSTM the same type (its errors are both RuntimeError and ValueError, option type errors
# both TypeError and ValueError) with its own message, which names the argument and the expected shape.


def _error_inputs(dtype):
    make = partial(make_tensor, device="cpu", dtype=dtype)
    mismatched = make_tensor((2, 4, 3), device="cpu", dtype=torch.float64 if dtype == torch.float32 else torch.float32)
    return [
        ("LSTMCell", (10, 20), {}, (make(3, 11), (make(3, 20), make(3, 20))), RuntimeError,
         "input has inconsistent input_size: got 11 expected 10", r"expected input of shape \(batch, 10\).*got \[3, 11\]"),
        ("LSTMCell", (10, 20), {}, (make(3, 10), (make(3, 21), make(3, 21))), RuntimeError,
         "hidden0 has inconsistent hidden_size: got 21, expected 20", r"expected hx of shapes \(3, 20\) and \(3, 20\)"),
        ("LSTMCell", (10, 20), {}, (make(3, 10), (make(5, 20), make(5, 20))), RuntimeError,
         "Input batch size 3 doesn't match hidden0 batch size 5", r"expected hx of shapes \(3, 20\).*got \[5, 20\]"),
        ("LSTMCell", (10, 20), {}, (make(3, 10), (make(3, 1, 1, 20), make(3, 1, 1, 20))), ValueError,
         r"Expected hx\[0\] to be 1D or 2D, got 4D instead", r"expected hx of shapes.*got \[3, 1, 1, 20\]"),
        ("LSTM", (10, 0, 1), {}, None, ValueError, "hidden_size must be greater than zero", "hidden_size=0 must be an int >= 1"),
        ("LSTM", (10, 10, 0), {}, None, ValueError, "num_layers must be greater than zero", "num_layers=0 must be an int >= 1"),
        ("LSTM", (3, 5), dict(dtype=dtype, device="cpu"), (mismatched,), ValueError,
         r"RNN input dtype .* does not match weight dtype .* Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)",
         r"input dtype .* does not match weight dtype .* Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)"),
        ("LSTM", (3, 5), dict(bias=0), None, TypeError, "bias should be of type bool, got: int", r"bias=0 must be a bool"),
        ("LSTM", (3, 5), dict(bias=1), None, TypeError, "bias should be of type bool, got: int", r"bias=1 must be a bool"),
        ("LSTM", (3, 5), dict(bias="True"), None, TypeError, "bias should be of type bool, got: str", r"bias='True' must be a bool"),
        ("LSTM", (3, 5), dict(batch_first=0), None, TypeError, "batch_first should be of type bool, got: int",
         r"batch_first=0 must be a bool"),
        ("LSTM", (3, 5), dict(batch_first=1), None, TypeError, "batch_first should be of type bool, got: int",
         r"batch_first=1 must be a bool"),
        ("LSTM", (3, 5), dict(batch_first="False"), None, TypeError, "batch_first should be of type bool, got: str",
         r"batch_first='False' must be a bool"),
        ("LSTM", (3.0, 5), {}, None, TypeError, "input_size should be of type int, got: float", r"input_size=3.0 must be an int"),
        ("LSTM", ("10", 5), {}, None, TypeError, "input_size should be of type int, got: str", r"input_size='10' must be an int"),
        ("LSTM", (0, 5), {}, None, ValueError, "input_size must be greater than zero", r"input_size=0 must be an int >= 1"),
        ("LSTM", (-1, 5), {}, None, ValueError, "input_size must be greater than zero", r"input_size=-1 must be an int >= 1"),
        ("LSTM", (3, 5.0), {}, None, TypeError, "hidden_size should be of type int, got: float", r"hidden_size=5.0 must be an int"),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_errors(impl, dtype):
    for kind, args, kwargs, forward_args, error, upstream_regex, our_regex in _error_inputs(dtype):
        cls = _module_cls(impl, kind)
        regex = upstream_regex if impl.is_torch else our_regex
        if forward_args is None:
            with pytest.raises(error, match=regex):
                cls(*args, **kwargs)
        else:
            m = cls(*args, **kwargs)
            with pytest.raises(error, match=regex) as info:
                m(*forward_args)
            if not impl.is_torch:
                assert isinstance(info.value, InputError)
