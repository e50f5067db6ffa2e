"""The fused backend (nn/fused.py and its C++ kernel) against the eager per-step loop.

Both implementations of the fused algorithm are checked: the compiled CPU kernel ("cpp", when the
extension is built) and the plain-PyTorch one ("torch", which CUDA tensors use).
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from peephole_lstm import PeepholeLSTM
from peephole_lstm.nn import fused
from peephole_lstm.nn.layer import _step_function
from tests.nn.helpers import gradients, make_lstm

# The C++ kernel picks per GEMM by size: oneDNN's brgemm (float32 up to depth K = 2048), its own tiled
# GEMM (other dtypes up to 8M multiply-adds), oneDNN's matmul (deeper, float32) or MKL's at::mm (the rest).
# "cpp-<gemm>" forces one of them for every size; "cpp" is its default choice.
KERNELS = ["torch"] + (["cpp", "cpp-tiled", "cpp-mkl"] if fused.extension_available() else [])
DEFAULT_KERNEL = "cpp" if fused.extension_available() else "torch"  # what a CPU tensor runs
# The fast lane's share of a per-kernel test (docs/testing.md): the CPU default and the PyTorch version.
LANE_KERNELS = [k if k in ("torch", DEFAULT_KERNEL) else pytest.param(k, marks=pytest.mark.slow) for k in KERNELS]
NEEDS_ONEDNN = pytest.mark.skipif(not fused.extension_available() or not torch.backends.mkldnn.is_available(),
                                  reason="needs the C++ kernel and a torch built with oneDNN")
BIG = 1 << 62
GEMM_THRESHOLDS = {  # (brgemm_max_depth, tiled_max_macs, onednn_min_macs)
    "cpp": None, "cpp-brgemm": (BIG, -1, BIG), "cpp-tiled": (-1, BIG, BIG), "cpp-mkl": (-1, -1, BIG),
    "cpp-onednn": (-1, -1, 0),
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OPTIONS = [
    dict(peephole="none"),
    dict(peephole="diagonal"),
    dict(peephole="full"),
    dict(peephole="diagonal", output_peephole="previous"),
    dict(peephole="full", output_peephole="previous", peephole_gates="fo"),
    dict(peephole="full", coupled=True),
    dict(input_gate=False, peephole_gates="fo"),
    dict(forget_gate=False),
    dict(output_gate=False, peephole="full"),
    dict(input_activation="identity", output_activation="identity"),
    dict(peephole_gates="o"),
    dict(proj_size=3, peephole="full"),
    dict(cell_clip=0.3),
    dict(cell_clip=0.25, peephole="full", coupled=True, zoneout=0.3),  # zoneout: eval mode mixes
    dict(num_layers=2, bidirectional=True, proj_size=2, peephole="full"),
]


def _options_id(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def kernel_option_cases():
    """(kwargs, kernel) for every option on every kernel. The fast lane (docs/testing.md) keeps every option
    on the CPU default ("cpp", whose code has a branch per option), and the two richest options (zoneout,
    clip and CIFG; two bidirectional layers with a projection) on the other kernels: "torch" is the same
    algorithm in PyTorch ops, and cpp-tiled / cpp-mkl differ from "cpp" only in which GEMM runs. The full
    suite runs them all."""
    return [pytest.param(kwargs, name, id=f"{_options_id(kwargs)}-{name}",
                         marks=() if name == DEFAULT_KERNEL or kwargs in OPTIONS[-2:] else pytest.mark.slow)
            for kwargs in OPTIONS for name in KERNELS]


@contextlib.contextmanager
def kernel(name: str):
    previous = fused.set_extension_enabled(name.startswith("cpp"))
    thresholds = GEMM_THRESHOLDS.get(name)
    setters = (fused._fused_cpu.set_brgemm_max_depth, fused._fused_cpu.set_tiled_max_macs,
               fused._fused_cpu.set_onednn_min_macs) if thresholds else ()
    saved = [set_(value) for set_, value in zip(setters, thresholds or ())]
    try:
        yield
    finally:
        fused.set_extension_enabled(previous)
        for set_, value in zip(setters, saved):
            set_(value)


def _run(lstm, x, lengths=None, hx=None):
    """Output, final state and every gradient (input, initial state, parameters) of a weighted loss."""
    x = x.clone().requires_grad_()
    hx = tuple(h.clone().requires_grad_() for h in hx) if hx is not None else None
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, (h_n, c_n) = lstm(inp, hx)
    if lengths is not None:
        out = pad_packed_sequence(out)[0]
    values = [out, h_n, c_n]
    gen = torch.Generator().manual_seed(1)  # weights drawn in float64 so that every dtype gets the same loss
    loss = sum((v * torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype)).sum() for v in values)
    grads = gradients(loss, [x, *(hx or ()), *lstm.parameters()])
    return values + list(grads)


def _assert_close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def _pair(kwargs, seed=0):
    """The same random module twice: backend 'fused' and 'eager'."""
    return make_lstm(4, 5, seed=seed, backend="fused", **kwargs), make_lstm(4, 5, seed=seed, backend="eager", **kwargs)


@pytest.mark.parametrize("kwargs, name", kernel_option_cases())
def test_fused_matches_eager_in_float64(kwargs, name):
    fast, slow = _pair(kwargs)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    n = fast.num_layers * fast.num_directions
    hx = (torch.randn(n, 3, fast.options[0].output_size, dtype=torch.float64), torch.randn(n, 3, 5, dtype=torch.float64))
    with kernel(name):
        got = _run(fast, x, hx=hx)
        assert fast.last_path == ("fused-torch" if name == "torch" else "fused-cpp")
        _assert_close(got, _run(slow, x, hx=hx), 1e-10)
        # Variable lengths: padded steps must leave the state and the gradients as the eager loop does.
        lengths = torch.tensor([6, 2, 4])
        _assert_close(_run(fast, x, lengths), _run(slow, x, lengths), 1e-10)


def _forward_only(lstm, x, lengths=None, hx=None):
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, (h_n, c_n) = lstm(inp, hx)
    return [pad_packed_sequence(out)[0] if lengths is not None else out, h_n, c_n]


@pytest.mark.parametrize("kwargs, name", kernel_option_cases())
def test_inference_forward_matches_eager(kwargs, name):
    # Without a gradient to compute the kernels keep no step's gates or states (another code path):
    # the same numbers as the eager loop under no_grad, inference_mode and with nothing requiring grad.
    fast, slow = _pair(kwargs)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    n = fast.num_layers * fast.num_directions
    hx = (torch.randn(n, 3, fast.options[0].output_size, dtype=torch.float64), torch.randn(n, 3, 5, dtype=torch.float64))
    lengths = torch.tensor([6, 2, 4])
    want, want_packed = _forward_only(slow, x, hx=hx), _forward_only(slow, x, lengths)
    frozen = make_lstm(4, 5, seed=0, backend="fused", **kwargs).requires_grad_(False)
    with kernel(name):
        for mode, module in ((torch.no_grad, fast), (torch.inference_mode, fast), (contextlib.nullcontext, frozen)):
            with mode():
                got = _forward_only(module, x, hx=hx)
                got_packed = _forward_only(module, x, lengths)
            assert module.last_path == ("fused-torch" if name == "torch" else "fused-cpp")
            assert all(g.grad_fn is None for g in got)
            _assert_close(got, want, 1e-10)
            _assert_close(got_packed, want_packed, 1e-10)
            # Separate tensors, as nn.LSTM returns: writing into the output leaves h_n and c_n alone.
            states = [got[1].clone(), got[2].clone()]
            with mode():
                got[0].add_(1.0)
            _assert_close(got[1:], states, 0)


@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kwargs", [OPTIONS[1], OPTIONS[2], OPTIONS[-2], OPTIONS[-1]], ids=_options_id)
def test_inference_in_row_blocks_matches_eager(kwargs, dtype, tol, all_threads):
    """With two or more threads, an inference forward of at least 64 rows with small steps runs each
    block of rows through the whole sequence on its own thread (csrc/forward.cpp, lstm_forward): 70 rows
    split unevenly (35 + 35 on two threads, 24 + 23 + 23 on three), with lengths and an initial state
    per row, must give the eager loop's numbers row for row (float32 runs the brgemm GEMM)."""
    if all_threads < 2:
        pytest.skip("the rows are split only across two or more threads")
    fast = make_lstm(4, 5, seed=0, backend="fused", **kwargs).to(dtype)
    slow = make_lstm(4, 5, seed=0, backend="eager", **kwargs).to(dtype)
    x = torch.randn(6, 70, 4, dtype=dtype)
    n = fast.num_layers * fast.num_directions
    hx = (torch.randn(n, 70, fast.options[0].output_size, dtype=dtype), torch.randn(n, 70, 5, dtype=dtype))
    lengths = torch.randint(1, 7, (70,))
    with torch.inference_mode():
        want, want_packed = _forward_only(slow, x, hx=hx), _forward_only(slow, x, lengths)
        got, got_packed = _forward_only(fast, x, hx=hx), _forward_only(fast, x, lengths)
    assert fast.last_path == "fused-cpp"
    _assert_close(got, want, tol)
    _assert_close(got_packed, want_packed, tol)


@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
@pytest.mark.parametrize("kwargs", [
    dict(peephole="diagonal"),  # split, output gate and cell phases in one pass; peephole sums per thread
    dict(peephole="diagonal", output_peephole="previous", cell_clip=0.3, coupled=True),
    dict(peephole="diagonal", cell_clip=0.2, zoneout=0.3, input_gate=False, peephole_gates="fo"),
    dict(peephole="full", proj_size=7),  # the phases apart, with GEMMs over all rows between them
], ids=_options_id)
def test_training_with_rows_split_over_threads_matches_eager(kwargs, all_threads):
    """The kernels' per-step passes split the batch rows over the threads from 4096 elements a thread on
    (pointwise.h, for_rows); with diagonal peepholes each thread sums its rows' peephole gradients
    (csrc/backward.cpp, cell_row). 130 rows of 4 x 64 gates are two blocks of 65 on two threads: values
    and every gradient must equal the eager loop's, with and without padding."""
    if all_threads < 2:
        pytest.skip("the rows are split only across two or more threads")
    fast = make_lstm(4, 64, seed=0, backend="fused", **kwargs)
    slow = make_lstm(4, 64, seed=0, backend="eager", **kwargs)
    x = torch.randn(5, 130, 4, dtype=torch.float64)
    lengths = torch.randint(1, 6, (130,))
    lengths[0] = 5
    with kernel("cpp"):
        _assert_close(_run(fast, x), _run(slow, x), 1e-10)
        _assert_close(_run(fast, x, lengths), _run(slow, x, lengths), 1e-10)
    assert fast.last_path == "fused-cpp"


@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
@pytest.mark.parametrize("trainable", ["x", "bias_ih_l0", "weight_ih_l0", "weight_hh_l0", "bias_hh_l0,weight_ch_l0"])
def test_training_with_the_projection_in_the_kernel_for_any_trainable_subset(trainable):
    """A CPU layer with 8 or more rows trains through ops._ProjectedSequence (the input projection inside
    the kernel's step GEMM; dW_ih, dW_hh and the bias gradient from the kernel): whichever inputs need a
    gradient (frozen weights and an input gradient, one bias alone), each equals the eager loop's."""
    fast, slow = _pair(dict(peephole="diagonal", cell_clip=0.4))
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    names = trainable.split(",")
    got, want = [], []
    for module, out in ((fast, got), (slow, want)):
        for name, p in module.named_parameters():
            p.requires_grad_(name in names)
        leaf = x.clone().requires_grad_("x" in names)
        y, (h, c) = module(leaf)
        if module is fast:
            assert type(y.grad_fn).__name__ == "_ProjectedSequenceBackward"
        wrt = [leaf] * ("x" in names) + [p for n, p in module.named_parameters() if n in names]
        out.extend(torch.autograd.grad((y * 0.3).sum() + (h * c).sum(), wrt))
    _assert_close(got, want, 1e-10)


@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
def test_inference_keeps_no_per_step_buffers():
    # A training forward takes its gates and states of all steps (> 1 MB here) from the kernel's buffer
    # cache; an inference forward must not allocate them at all.
    lstm = PeepholeLSTM(8, 128, peephole="full", proj_size=48, cell_clip=0.5).eval()
    x = torch.randn(40, 32, 8)
    fused.empty_cache()
    with kernel("cpp"):
        with torch.inference_mode():
            lstm(x)
        assert fused._fused_cpu.cached_bytes() == 0
        lstm(x)[0].sum().backward()
        assert fused._fused_cpu.cached_bytes() >= 40 * 32 * 4 * 128 * 4
    fused.empty_cache()


@pytest.mark.parametrize("name", LANE_KERNELS)
def test_gradcheck(name):
    lstm = make_lstm(2, 3, seed=3, backend="fused", peephole="full", proj_size=2, cell_clip=0.8, zoneout=0.2)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    params = list(lstm.parameters())

    def f(x, *weights):
        with torch.nn.utils.stateless._reparametrize_module(lstm, dict(zip(dict(lstm.named_parameters()), weights))):
            out, (h, c) = lstm(x)
        return out, h, c

    with kernel(name):
        assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.slow  # the float64 test above is the fast lane's check of the kernel against eager
@NEEDS_ONEDNN
@pytest.mark.parametrize("gemm", ["cpp-onednn", "cpp-brgemm"])
@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_float32_gemms_match_eager(kwargs, gemm):
    # The float32-only GEMMs, in training and in inference (where the input projection joins the
    # recurrent GEMM, with its bias).
    fast, slow = (m.float() for m in _pair(kwargs))
    x = torch.randn(6, 3, 4)
    lengths = torch.tensor([6, 2, 4])
    with kernel(gemm):
        _assert_close(_run(fast, x), _run(slow, x), 2e-5)
        _assert_close(_run(fast, x, lengths), _run(slow, x, lengths), 2e-5)
        with torch.inference_mode():
            _assert_close(_forward_only(fast, x), _forward_only(slow, x), 2e-5)
            _assert_close(_forward_only(fast, x, lengths), _forward_only(slow, x, lengths), 2e-5)


@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
@pytest.mark.parametrize("kwargs", [dict(peephole="diagonal"), dict(peephole="full", proj_size=7)])
def test_brgemm_panels_with_a_narrower_last_one(kwargs, all_threads):
    # brgemm reads W^T in panels of 64 columns: 4H = 80 is one full panel and one of 16 (the full
    # peepholes' GEMMs and the backward's have N = 40 and 20), and 40 rows of depth 320 are enough
    # multiply-adds to split the rows between the threads as well.
    fast = make_lstm(300, 20, seed=3, backend="fused", **kwargs).float()
    slow = make_lstm(300, 20, seed=3, backend="eager", **kwargs).float()
    x = torch.randn(5, 40, 300) / 10
    with kernel("cpp-brgemm"):
        _assert_close(_run(fast, x), _run(slow, x), 2e-5)
        with torch.inference_mode():
            _assert_close(_forward_only(fast, x), _forward_only(slow, x), 2e-5)


@NEEDS_ONEDNN
def test_each_gemm_implementation_really_runs(all_threads):
    # MKL sums the 64-term dot products in another order than the tiled GEMM, brgemm and oneDNN:
    # bitwise-different results show which one ran. At this size (8 x 64 @ 64 x 256) the default is
    # brgemm in float32, the tiled GEMM in float64 in AVX-512 builds, MKL in others; forcing one switches
    # the others off, so a result unlike MKL's is the forced one's.
    tiled_max = fused._fused_cpu.set_tiled_max_macs(0)
    fused._fused_cpu.set_tiled_max_macs(tiled_max)
    x = torch.randn(5, 8, 8, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):  # brgemm and oneDNN only ever take float32
        default = "cpp-brgemm" if dtype == torch.float32 else ("cpp-tiled" if 8 * 64 * 256 <= tiled_max else "cpp-mkl")
        lstm = make_lstm(8, 64, seed=2, backend="fused").to(dtype)
        runs = {}
        float32_only = ("cpp-onednn", "cpp-brgemm") if dtype == torch.float32 else ()
        for name in ("cpp", "cpp-tiled", "cpp-mkl") + float32_only:
            with kernel(name):
                runs[name] = _run(lstm, x.to(dtype))
        assert all(torch.equal(a, b) for a, b in zip(runs["cpp"], runs[default]))
        for name in set(runs) - {"cpp", "cpp-mkl"}:
            assert any(not torch.equal(a, b) for a, b in zip(runs[name], runs["cpp-mkl"])), (dtype, name)
            _assert_close(runs[name], runs["cpp-mkl"], 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.slow  # larger modules, many calls
@pytest.mark.skipif(not fused.extension_available(), reason="needs the C++ kernel")
@pytest.mark.parametrize("kwargs", [dict(peephole="diagonal"), dict(peephole="full", proj_size=48, cell_clip=0.5)])
def test_reused_buffers_give_the_same_results_every_call(kwargs, all_threads):
    # Buffers of 1 MB and more (here the (T, B, 4H) gates and dZ) come back from the kernel's cache
    # holding the previous call's data: nothing may rely on fresh memory.
    fused.empty_cache()

    def lstm(backend):  # default initialisation: the tests' random weights explode over 40 steps
        torch.manual_seed(4)
        return PeepholeLSTM(8, 128, backend=backend, **kwargs).double().eval()

    fast, slow = lstm("fused"), lstm("eager")
    x = torch.randn(40, 32, 8, dtype=torch.float64)
    lengths = torch.randint(1, 41, (32,))
    lengths[0] = 40
    want = _run(slow, x, lengths)
    with kernel("cpp"):
        first = _run(fast, x, lengths)
        cached = fused._fused_cpu.cached_bytes()
        assert cached >= 40 * 32 * 4 * 128 * 8  # at least the gates' buffer was returned for reuse
        second = _run(fast, x, lengths)
        assert fused._fused_cpu.cached_bytes() == cached  # reused, not allocated again
        shorter = _run(fast, x[:30])  # a shorter batch fits in the same blocks
        assert fused._fused_cpu.cached_bytes() == cached
    _assert_close(first, want, 1e-10)
    _assert_close(second, want, 1e-10)
    _assert_close(shorter, _run(slow, x[:30]), 1e-10)
    assert fused.empty_cache() == cached
    assert fused._fused_cpu.cached_bytes() == 0


@pytest.mark.parametrize("name", [k if k == DEFAULT_KERNEL else pytest.param(k, marks=pytest.mark.slow) for k in KERNELS])
def test_float32_and_bfloat16_follow_float64(name):
    ref = make_lstm(6, 8, seed=1, backend="fused", peephole="full", proj_size=4)
    # Seeded like the weights: bfloat16's 0.1 tolerance must not depend on which tests drew numbers before.
    x = torch.randn(10, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with kernel(name):
        want = _run(ref, x)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.1)):
            lstm = make_lstm(6, 8, seed=1, backend="fused", peephole="full", proj_size=4).to(dtype)
            got = _run(lstm, x.to(dtype))
            assert all(g.dtype == dtype for g in got)
            _assert_close([g.double() for g in got], want, tol)


def test_auto_uses_fused_and_falls_back_with_the_reason():
    lstm = PeepholeLSTM(3, 4)
    x = torch.randn(5, 2, 3)
    lstm(x)
    assert lstm.last_path in ("fused-cpp", "fused-torch")
    assert lstm.last_path == ("fused-cpp" if fused.extension_available() else "fused-torch")
    assert "last_path=" in repr(lstm)
    for kwargs, reason in ((dict(layer_norm=True), "layer_norm"), (dict(gate_recurrence=True), "gate_recurrence")):
        auto = PeepholeLSTM(3, 4, **kwargs)
        auto(x)
        assert auto.last_path.startswith("eager (") and reason in auto.last_path
    zoneout = PeepholeLSTM(3, 4, zoneout=0.5)
    zoneout(x)
    assert zoneout.last_path.startswith("eager (zoneout")
    zoneout.eval()
    zoneout(x)
    assert zoneout.last_path.startswith("fused")
    # Asking for backend="fused" with an option it lacks still computes the result, with a warning.
    explicit = PeepholeLSTM(3, 4, layer_norm=True, backend="fused")
    with pytest.warns(UserWarning, match="layer_norm=True is not supported by the fused kernel"):
        explicit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit(x)  # warned once per module and reason


def test_output_is_not_a_view_of_the_saved_state():
    lstm = make_lstm(3, 4, backend="fused")
    out, (h, c) = lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    out.mul_(2.0)  # in place, as a user may do: must not corrupt the backward
    h.add_(1.0)
    assert torch.isfinite(torch.autograd.grad(out.sum() + h.sum(), list(lstm.parameters()))[0]).all()


@pytest.mark.slow  # Dynamo tracing
def test_compile_backend_compiles_once_for_all_lengths_and_batch_sizes():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    _step_function.cache_clear()
    counters.clear()
    lstm = PeepholeLSTM(3, 4, backend="compile").double()
    counts = []
    for t, b in [(5, 2), (9, 3), (17, 6), (40, 5)]:  # (T, B)
        lstm(torch.randn(t, b, 3, dtype=torch.float64))[0].sum().backward()
        counts.append(counters["stats"]["unique_graphs"])
    # The first sequence may compile the step twice (its first step sees the initial state, a view with
    # other strides); new lengths and batch sizes then reuse the graphs.
    assert 1 <= counts[0] <= 2 and counts == counts[:1] * len(counts), counts
    torch._dynamo.reset()
    _step_function.cache_clear()


@CUDA
@pytest.mark.parametrize("kwargs", OPTIONS[:3] + OPTIONS[-4:], ids=str)
def test_cuda_matches_cpu_eager(kwargs):
    fast, slow = _pair(kwargs)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    got = _run(fast.cuda(), x.cuda(), torch.tensor([6, 2, 4]))
    assert fast.last_path == ("fused-triton" if fused.triton_available() else "fused-torch")  # as kernel_name picks
    _assert_close([g.cpu() for g in got], _run(slow, x, torch.tensor([6, 2, 4])), 1e-10)
