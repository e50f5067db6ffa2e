"""PyTorch's nn.LSTM / nn.LSTMCell tests from test/test_nn.py (TestNN and TestNNDeviceType), the ones
that run on CPU, with upstream's assertions; each runs through the `impl` switch (conftest.py).

Upstream tests that loop over nn.RNN, nn.GRU and nn.LSTM keep the nn.LSTM case. Tests that need CUDA or
cuDNN, or that exercise nn.LSTM internals with no counterpart here, are listed at the end, skipped with
their reason.
"""
from __future__ import annotations

import copy
import re
import warnings
from itertools import product

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch.autograd import gradcheck, gradgradcheck


def test_rnn_weight_norm(impl):
    def check_weight_norm(l, name, num_params):
        # Applying weight norm on one of them causes it to become a tensor
        l = torch.nn.utils.weight_norm(l, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == num_params - 1
        # Removing the weight norm reparametrization restores the Parameter
        l = torch.nn.utils.remove_weight_norm(l, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in l._flat_weights) == num_params
        # upon removal, ._parameters and .named_parameters hold the original weight, not the _v/_g parts
        assert name in l._parameters and l._parameters[name] is not None
        assert name + "_v" not in l._parameters and name + "_g" not in l._parameters
        named = dict(l.named_parameters())
        assert named.get(name) is not None and name + "_v" not in named and name + "_g" not in named

    extra = impl.extra_params  # weight_ch_l0 with peepholes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated for parametrizations
        check_weight_norm(impl.lstm(32, 32), "weight_ih_l0", 4 + extra)
        check_weight_norm(impl.lstm(32, 32, proj_size=16), "weight_hr_l0", 5 + extra)


def test_RNN_cell_no_broadcasting(impl):
    def test(cell_module, input, hx, input_size, hidden_size):
        cell = cell_module(input_size, hidden_size)
        with pytest.raises(RuntimeError):
            cell(input, hx)

    def test_all(hidden_size, bad_hx, good_hx, input_size, input):
        test(impl.cell, input, (bad_hx, good_hx), input_size, hidden_size)
        test(impl.cell, input, (good_hx, bad_hx), input_size, hidden_size)

    hidden_size, input_size = 20, 10
    input = torch.randn(3, input_size)
    bad_hx = torch.randn(1, hidden_size)
    good_hx = torch.randn(3, hidden_size)
    test_all(hidden_size, bad_hx, good_hx, input_size, input)  # hidden/input batch size broadcasting
    bad_hx = torch.randn(3, 1)
    test_all(hidden_size, bad_hx, good_hx, input_size, input)  # hx's hidden_size broadcasting
    bad_input = torch.randn(3, 1)
    test_all(hidden_size, good_hx, good_hx, input_size, bad_input)  # input's input_size broadcasting


def test_LSTM_cell(impl):
    # this is just a smoke test; these modules are implemented through autograd so no Jacobian test is needed
    for bias in (True, False):
        input = torch.randn(3, 10)
        hx = torch.randn(3, 20)
        cx = torch.randn(3, 20)
        lstm = impl.cell(10, 20, bias=bias)
        for _ in range(6):
            hx, cx = lstm(input, (hx, cx))
        (hx + cx).sum().backward()


def test_LSTM_cell_forward_input_size(impl):
    input = torch.randn(3, 11)
    hx = torch.randn(3, 20)
    cx = torch.randn(3, 20)
    lstm = impl.cell(10, 20)
    with pytest.raises(Exception):
        lstm(input, (hx, cx))


def test_LSTM_cell_forward_hidden_size(impl):
    input = torch.randn(3, 10)
    hx = torch.randn(3, 21)
    cx = torch.randn(3, 20)
    lstm = impl.cell(10, 20)
    with pytest.raises(Exception):
        lstm(input, (hx, cx))
    with pytest.raises(Exception):
        lstm(input, (cx, hx))


def test_cudnn_forward_exception(impl):
    """Named after cuDNN but runs on CPU upstream. Messages differ: nn.LSTM's regexes for nn.LSTM, the
    library's (which name the expected shapes) for PeepholeLSTM; the type is RuntimeError for both."""
    rnns = [
        (impl.lstm(10, 20, batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (impl.lstm(10, 20, batch_first=True, proj_size=10), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
    ]
    x_wrong = torch.randn(2, 3, 3)
    x_right = torch.randn(2, 3, 10)
    hidden_regex = "Expected hidden.*size.*got" if impl.is_torch else r"expected hx = \(h_0 of shape.*got"
    input_regex = re.escape("input.size(-1) must be equal to input_size") if impl.is_torch else \
        re.escape("expected input of shape (batch, seq_len, 10)")
    for rnn, hidden in rnns:
        with pytest.raises(RuntimeError, match=hidden_regex):
            rnn(x_right, hidden)
        with pytest.raises(RuntimeError, match=input_regex):
            rnn(x_wrong)


def test_rnn_args_check(impl):
    input_size, hidden_size, num_layers, batch_size, seq_len, num_directions = 3, 5, 2, 4, 6, 1
    bad_size = 7  # prime number so that no size can divide it.

    def test(input_shape, hidden_shape):
        for input, hidden in get_inputs(input_shape, hidden_shape):
            model = impl.lstm(input_size, hidden_size, num_layers)
            with pytest.raises(RuntimeError):
                model(input, hidden)

    correct_input_shape = (seq_len, batch_size, input_size)
    correct_hidden_shape = (num_layers * num_directions, batch_size, hidden_size)

    def update_shape(shape, dim, new_dim_size):
        new_shape = list(shape)
        new_shape[dim] = new_dim_size
        return tuple(new_shape)

    def get_inputs(input_shape, hidden_shape):
        input = torch.randn(input_shape)
        hidden = torch.randn(hidden_shape)
        if hidden_shape == correct_hidden_shape:
            return [(input, (hidden, hidden))]
        good_hidden = torch.randn(correct_hidden_shape)
        return [(input, (hidden, good_hidden)), (input, (good_hidden, hidden))]

    test(update_shape(correct_input_shape, 1, bad_size), correct_hidden_shape)  # input batch size
    test(correct_input_shape, update_shape(correct_hidden_shape, 1, bad_size))  # hidden batch size
    test(update_shape(correct_input_shape, 2, bad_size), correct_hidden_shape)  # input size
    test(correct_input_shape, update_shape(correct_hidden_shape, 2, bad_size))  # hidden size
    test(correct_input_shape, update_shape(correct_hidden_shape, 0, bad_size))  # hidden[0]


def test_projections_lstm_args_check(impl):
    input_size, hidden_size, proj_size, num_layers, batch_size, seq_len, num_directions = 3, 5, 2, 2, 4, 6, 1
    bad_size = 7

    def test(input_shape, hidden_h_shape, hidden_c_shape):
        input = torch.randn(input_shape)
        hidden = (torch.randn(hidden_h_shape), torch.randn(hidden_c_shape))
        model = impl.lstm(input_size, hidden_size, num_layers, proj_size=proj_size)
        with pytest.raises(RuntimeError):
            model(input, hidden)

    correct_input_shape = (seq_len, batch_size, input_size)
    h_shape = (num_layers * num_directions, batch_size, proj_size)
    c_shape = (num_layers * num_directions, batch_size, hidden_size)

    def update_shape(shape, dim, new_dim_size):
        new_shape = list(shape)
        new_shape[dim] = new_dim_size
        return tuple(new_shape)

    test(update_shape(correct_input_shape, 1, bad_size), h_shape, c_shape)  # input batch size
    test(correct_input_shape, update_shape(h_shape, 1, bad_size), update_shape(c_shape, 1, bad_size))  # hidden batch
    test(update_shape(correct_input_shape, 2, bad_size), h_shape, c_shape)  # input size
    test(correct_input_shape, update_shape(h_shape, 2, bad_size), update_shape(c_shape, 2, bad_size))  # hidden size
    test(correct_input_shape, update_shape(h_shape, 0, bad_size), update_shape(c_shape, 0, bad_size))  # hidden[0]
    test(correct_input_shape, update_shape(h_shape, 0, hidden_size), c_shape)  # proj size = hidden size
    test(correct_input_shape, update_shape(h_shape, 0, bad_size), c_shape)  # proj size != hidden size
    test(correct_input_shape, h_shape, update_shape(c_shape, 0, bad_size))  # cell size != hidden size


def test_rnn_initial_hidden_state(impl):
    rnn = impl.lstm(30, 20, 2)
    input = torch.randn(10, 32, 30)
    hidden = torch.zeros(2, 32, 20)
    output1, hidden1 = rnn(input, (hidden, hidden))
    output2, hidden2 = rnn(input)
    torch.testing.assert_close(output1, output2)
    torch.testing.assert_close(hidden1, hidden2)


def test_projections_lstm_initial_hidden_state(impl):
    for bidir in [False, True]:
        rnn = impl.lstm(30, 20, 2, bidirectional=bidir, proj_size=10)
        num_dirs = 2 if bidir else 1
        input = torch.randn(10, 32, 30)
        hidden = (torch.zeros(2 * num_dirs, 32, 10), torch.zeros(2 * num_dirs, 32, 20))
        output1, hidden1 = rnn(input, hidden)
        output2, hidden2 = rnn(input)
        torch.testing.assert_close(output1, output2)
        torch.testing.assert_close(hidden1, hidden2)


def test_error_RNN_seq_len_zero(impl):
    """Upstream skips it without cuDNN, though its CPU half needs none."""
    for bidirectional in [True, False]:
        input = torch.ones(0, 10, 5, dtype=torch.double)
        rnn = impl.lstm(5, 6, bidirectional=bidirectional).double()
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
            rnn(input)


def test_RNN_input_size_zero(impl):
    input = torch.zeros((5, 0, 3))
    rnn = impl.lstm(input_size=3, hidden_size=4)
    outs = rnn(input)
    assert outs[0].shape == torch.Size([5, 0, 4])
    outs[0].sum().backward()  # backward does not cause a hard error


def test_RNN_change_dropout(impl):
    """Upstream's is for nn.RNN(100, 100, 2) (and skipped without cuDNN, though its CPU half needs none);
    the same contract for nn.LSTM, at a fifth of the width: `rnn.dropout = p` between calls takes effect."""
    torch.manual_seed(0)
    for train in (True, False):
        rnn = impl.lstm(20, 20, 2, dropout=0).double()
        input = torch.rand(3, 2, 20, dtype=torch.double)
        rnn.train(train)
        prev_output = None
        for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
            rnn.dropout = p
            output1, hy1 = rnn(input)
            output2, hy2 = rnn(input)
            if p == 0 or p == 1 or not train:
                torch.testing.assert_close(output1, output2)
                torch.testing.assert_close(hy1, hy2)
            else:
                assert not torch.allclose(output1, output2)
                assert not torch.allclose(hy1[0], hy2[0])
            if prev_output is not None:
                if not train:
                    torch.testing.assert_close(output1.data, prev_output)
                    torch.testing.assert_close(output2.data, prev_output)
                else:
                    assert not torch.allclose(output1.data, prev_output)
                    assert not torch.allclose(output2.data, prev_output)
            prev_output = output1.data


def test_rnn_retain_variables(impl):
    """TestNNDeviceType, CPU dtype double."""
    rnn = impl.lstm(10, 20, num_layers=2).to("cpu", torch.double)
    input = torch.randn(5, 6, 10, dtype=torch.double, requires_grad=True)
    output = rnn(input)
    output[0].sum().backward(retain_graph=True)
    grads = [input.grad.data.clone()] + [p.grad.data.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        input.grad.data.zero_()
        output[0].sum().backward(retain_graph=True)
        grads2 = [input.grad.data] + [p.grad.data for p in rnn.parameters()]
        torch.testing.assert_close(grads, grads2)


def test_lstmcell_backward_only_one_output_grad(impl):
    """onlyCUDA upstream, but what it checks (an undefined gradient for h or c does not break backward,
    pytorch#11872) is not about the device."""
    l = impl.cell(2, 3).to(dtype=torch.double)
    s = torch.randn(1, 2, dtype=torch.double, requires_grad=True)
    for i in range(2):
        out = l(s)[i]
        out.sum().backward()
        assert not (s.grad is None or s.grad.abs().sum().item() == 0)


def test_LSTM_grad_and_gradgrad(impl):
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=torch.double, requires_grad=True)
    for bias in [True, False]:
        mod = impl.lstm(hsize, hsize, bias=bias).to(torch.double)

        def flatten_out(inp):
            out = mod(inp)
            return tuple([t if isinstance(t, torch.Tensor) else tt for t in out for tt in t])

        gradcheck(flatten_out, inp, check_batched_grad=False)
        gradgradcheck(flatten_out, inp, check_batched_grad=False)


def test_LSTM_differentiable_backward_using_oneDNN(impl):
    """Upstream: the input-gradient penalty of a 20-layer nn.LSTM is the same with oneDNN's fused LSTM
    kernel and without (torch._C._set_mkldnn_enabled). For PeepholeLSTM the fast path is the fused
    kernel: with it (backend "auto") and without (backend "eager"). Upstream parametrises it over
    float32 and bfloat16 but its body builds everything in float32, so one run is the same test."""
    batch, seq_len, input = 10, 12, 3
    torch.manual_seed(0)
    net = impl.lstm(input, 3, 20, batch_first=True)
    net_clone = copy.deepcopy(net)
    x = torch.rand(batch, seq_len, input)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)

    def fast_path(enabled: bool, module):
        if impl.is_torch:
            torch._C._set_mkldnn_enabled(enabled)
        else:
            module.backend = "auto" if enabled else "eager"

    try:
        fast_path(False, net)
        out1, _ = net(x1)
        der_out1 = torch.autograd.grad(out1, x1, grad_outputs=torch.ones_like(out1), retain_graph=True,
                                       create_graph=True)[0]
        der_out1.sum().backward(retain_graph=True)
        fast_path(True, net_clone)
        out2, _ = net_clone(x2)
        der_out2 = torch.autograd.grad(out2, x2, grad_outputs=torch.ones_like(out2), retain_graph=True,
                                       create_graph=True)[0]
        der_out2.sum().backward(retain_graph=True)
    finally:
        torch._C._set_mkldnn_enabled(True)
    assert torch.allclose(der_out1, der_out2)
    assert torch.allclose(x1.grad, x2.grad)
    if not impl.is_torch:
        assert net.last_path == "eager" and net_clone.last_path.startswith("fused")


def test_rnn_weight_norm_forward_matches(impl):
    """The CPU half of test_RNN_cudnn_weight_norm (cuDNN upstream): weight norm leaves the output as it was."""
    for name, kwargs in (("weight_hh_l0", {}), ("weight_hr_l0", dict(proj_size=3))):
        m = impl.lstm(10, 6, 2, **kwargs)
        input = torch.randn(7, 6, 10)
        expected_output = m(input)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            m = torch.nn.utils.weight_norm(m, name=name)
            torch.testing.assert_close(m(input), expected_output)
            m = torch.nn.utils.remove_weight_norm(m, name=name)
        torch.testing.assert_close(m(input), expected_output)


def test_partial_flat_weights_cpu(impl):
    """The CPU half of test_partial_flat_weights (CUDA upstream): delete a weight, set it back, run."""
    m = impl.lstm(10, 6, 2)
    inp = torch.randn(3, 2, 10)
    out_expected = m(inp)
    weight_orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.weight_hh_l0 = weight_orig
    torch.testing.assert_close(m(inp)[0], out_expected[0])


def test_cpu_vs_reference_numbers(impl):
    """The CPU half of _test_RNN_cpu_vs_cudnn: weights copied through `all_weights` from one module into a
    fresh one give the same outputs and gradients, for every bias/bidirectional/batch_first/packing
    combination (upstream compares CPU with cuDNN; here the copy is nn.LSTM's weights into `impl`)."""
    impl.needs_nn_lstm_numbers()
    input_size, hidden_size, num_layers, seq_length, batch = 10, 6, 2, 7, 6
    # upstream's product over bias, bidirectional, batch_first, contiguity, packing and lengths-as-tensor,
    # here halved: batch_first alternates with the others
    for bias, bidirectional, variable_len in product((True, False), repeat=3):
        batch_first = bias != bidirectional
        torch.manual_seed(0)
        ref = torch.nn.LSTM(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                            batch_first=batch_first).double()
        rnn = impl.lstm(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                        batch_first=batch_first).double()
        for x_layer, y_layer in zip(rnn.all_weights, ref.all_weights):
            for x, y in zip(x_layer, y_layer):
                x.data.copy_(y.data)
        n = num_layers * (2 if bidirectional else 1)
        shape = (batch, seq_length, input_size) if batch_first else (seq_length, batch, input_size)
        x0 = torch.randn(*shape, dtype=torch.double)
        hx0 = torch.randn(n, batch, hidden_size, dtype=torch.double)
        results = []
        for module in (ref, rnn):
            x = x0.clone().requires_grad_()
            hx = (hx0.clone().requires_grad_(), hx0.add(1).requires_grad_())
            inp = rnn_utils.pack_padded_sequence(x, [7, 5, 5, 2, 1, 1], batch_first=batch_first) if variable_len else x
            output, (h, c) = module(inp, hx)
            output = output.data if variable_len else output
            torch.autograd.backward([output, h, c], [torch.ones_like(output), torch.ones_like(h), torch.ones_like(c) + 1])
            results.append([output, h, c, x.grad, hx[0].grad, hx[1].grad] + [p.grad for p in module.parameters()])
        torch.testing.assert_close(results[1], results[0])


# --- from test/test_autocast.py (TestAutocastCPU) ------------------------------------------------------


def test_autocast_rnn(impl):
    """A bfloat16 module refuses a float32 input (ValueError) but runs it under CPU autocast. Upstream
    skips it where oneDNN has no bfloat16; the fused kernel needs no oneDNN."""
    x = torch.randn(1, 2, 1)
    hx = torch.randn(2, 2, 1)
    cx = torch.randn(2, 2, 1)
    m = impl.lstm(1, 1, 2).to(torch.bfloat16)
    regex = r"RNN input dtype .* does not match weight dtype" if impl.is_torch else r"input dtype .* does not match weight dtype"
    with pytest.raises(ValueError, match=regex):
        m(x, (hx, cx))
    with torch.amp.autocast(device_type="cpu"):
        m(x, (hx, cx))


def test_autocast_runs_the_recurrence_in_the_autocast_dtype(impl):
    """Not upstream's: under autocast nn.LSTM computes in bfloat16 and returns bfloat16; so does the fused
    path (the default). Values within bfloat16 rounding of nn.LSTM's."""
    impl.needs_nn_lstm_numbers()
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    m = impl.lstm(3, 4, num_layers=2, bidirectional=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x)
        expected = ref(x)[0]
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=0)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in m.parameters())


SKIPPED = {
    "test_RNN_cpu_vs_cudnn_no_dropout": "compares CPU with cuDNN (CUDA); its CPU-only half is test_cpu_vs_reference_numbers",
    "test_RNN_cpu_vs_cudnn_with_dropout": "compares CPU with cuDNN (CUDA)",
    "test_RNN_cudnn_weight_norm": "cuDNN; its CPU half is test_rnn_weight_norm_forward_matches",
    "test_partial_flat_weights": "moves the module to CUDA; its CPU half is test_partial_flat_weights_cpu",
    "test_RNN_dropout": "nn.RNN (relu) only, and needs cuDNN",
    "test_RNN_dropout_state": "nn.RNN (relu) only, and needs cuDNN",
    "test_cudnn_weight_format": "cuDNN's flat weight buffer (CUDA)",
    "test_cudnn_weight_tying": "cuDNN (CUDA)",
    "test_cudnn_rnn_dropout_states_device": "multi-GPU, nn.RNN",
    "test_rnn_check_device": "multi-GPU",
    "test_projections_lstm_check_device": "multi-GPU",
    "test_pack_sequence_batch_sizes_throw": "CUDA",
    "test_rnn_fused": "compares CPU with CUDA's fused kernels (onlyCUDA)",
    "test_save_lstm_compatibility": "restores a PyTorch 1.7 nn.LSTM's __dict__ (before proj_size existed); "
                                    "PeepholeLSTM has no pickles from before it had proj_size",
    "test_projections_errors_on_gru_and_rnn": "nn.RNN and nn.GRU only",
}


@pytest.mark.parametrize("name", SKIPPED)
def test_not_applicable(impl, name):
    pytest.skip(f"{name}: {SKIPPED[name]}")
