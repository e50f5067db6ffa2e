"""Bad options and bad shapes fail at once with a message that names the problem and the fix;
forget_bias lands in the forget block of bias_ih."""
from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell, variants
from peephole_lstm.nn import InputError, OptionTypeError

BAD_OPTIONS = [
    (dict(peephole="diagnol"), r"peephole='diagnol'.*'none', 'diagonal', 'full'"),
    (dict(output_peephole="next"), r"output_peephole='next'.*'current', 'previous'"),
    (dict(input_activation="relu"), r"input_activation='relu'.*'tanh', 'identity'"),
    (dict(output_activation="sigmoid"), r"output_activation='sigmoid'.*'tanh', 'identity'"),
    (dict(peephole_gates="x"), r"peephole_gates='x'.*'ifo'"),
    (dict(peephole_gates=""), r"peephole_gates=''.*'ifo'"),
    (dict(peephole_gates="ii"), r"peephole_gates='ii'.*'ifo'"),
    (dict(proj_size=4), r"proj_size=4 must be smaller than hidden_size=4"),
    (dict(proj_size=-1), r"proj_size=-1 must be an int >= 0"),
    (dict(zoneout=1.5), r"zoneout=1.5 must be a probability in \[0, 1\)"),
    (dict(zoneout=-0.1), r"zoneout=-0.1 must be a probability"),
    (dict(cell_clip=0.0), r"cell_clip=0.0 must be None or a number > 0"),
    (dict(coupled=True, input_gate=False), r"coupled=True.*input_gate=False"),
    (dict(coupled=True, forget_gate=False), r"coupled=True.*forget_gate=False"),
    (dict(gate_recurrence=True, input_gate=False, forget_gate=False, output_gate=False), r"gate_recurrence=True"),
    (dict(layer_norm="yes"), r"layer_norm='yes' must be a bool"),
    # a peephole asked for on a gate that the other options remove
    (dict(coupled=True, peephole_gates="i"), r"peephole_gates='i'.*input gate, which coupled=True"),
    (dict(input_gate=False, peephole_gates="io"), r"peephole_gates='io'.*input gate, which input_gate=False"),
    (dict(forget_gate=False, peephole_gates="fo", peephole="full"), r"peephole_gates='fo'.*forget gate, which forget_gate=False"),
    (dict(output_gate=False, peephole_gates="o"), r"peephole_gates='o'.*output gate, which output_gate=False"),
    (dict(forget_bias="1"), r"forget_bias='1' must be a number"),
]
LAYER_ONLY = [
    (dict(backend="fast"), r"backend='fast'.*'auto', 'eager', 'script', 'compile'"),
    (dict(num_layers=0), r"num_layers=0 must be an int >= 1"),
    (dict(dropout=1.5), r"dropout=1.5 must be a probability"),
    (dict(batch_first="no"), r"batch_first='no' must be a bool"),
]


@pytest.mark.parametrize("kwargs,message", BAD_OPTIONS + LAYER_ONLY, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_layer_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeepholeLSTM(3, 4, **kwargs)


@pytest.mark.parametrize("kwargs,message", BAD_OPTIONS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_cell_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeepholeLSTMCell(3, 4, **kwargs)


def test_sizes_are_validated():
    with pytest.raises(ValueError, match="input_size=0"):
        PeepholeLSTM(0, 4)
    with pytest.raises(ValueError, match="hidden_size=2.5"):
        PeepholeLSTMCell(3, 2.5)


@pytest.mark.parametrize("kwargs", [dict(bias=0), dict(batch_first=1), dict(hidden_size=4.0), dict(input_size="3"),
                                    dict(peephole=None), dict(forget_bias="1")], ids=str)
def test_option_of_wrong_type_is_a_type_error_as_in_nn_lstm(kwargs):
    """nn.LSTM raises TypeError for these; OptionTypeError is one, and still the ValueError this library raised."""
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(OptionTypeError, match=f"{next(iter(kwargs))}=") as info:
        PeepholeLSTM(**args)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    if "batch_first" not in kwargs:
        with pytest.raises(OptionTypeError):
            PeepholeLSTMCell(**args)


def test_option_of_wrong_value_stays_a_value_error():
    with pytest.raises(ValueError) as info:
        PeepholeLSTM(0, 4)
    assert not isinstance(info.value, TypeError)


def test_input_errors_are_runtime_errors_for_nn_lstm_callers():
    """nn.LSTM raises RuntimeError for a wrong input or state; code written against it catches that."""
    lstm, cell = PeepholeLSTM(3, 4), PeepholeLSTMCell(3, 4)
    calls = [
        lambda: lstm(torch.randn(5, 2, 7)),
        lambda: lstm(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))),
        lambda: lstm(torch.randn(0, 2, 3)),
        lambda: lstm(torch.randn(5, 2, 3, dtype=torch.float64)),
        lambda: cell(torch.randn(2, 7)),
        lambda: cell(torch.randn(2, 3), (torch.zeros(1, 4), torch.zeros(2, 4))),
        lambda: cell(torch.randn(2, 3, dtype=torch.float64)),
    ]
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(), dict(batch_first=True), dict(bidirectional=True)], ids=str)
def test_zero_length_sequence_raises_like_nn_lstm(kwargs):
    lstm = PeepholeLSTM(5, 6, **kwargs)
    empty = torch.ones(10, 0, 5) if kwargs.get("batch_first") else torch.ones(0, 10, 5)
    for x in (empty, torch.ones(0, 5)):
        with pytest.raises(InputError, match="Expected sequence length to be larger than 0"):
            lstm(x)


def test_zero_batch_is_fine_as_in_nn_lstm():
    """An empty batch (not an empty sequence) is valid for nn.LSTM: empty outputs, and backward runs."""
    lstm = PeepholeLSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.zeros(5, 0, 3, requires_grad=True)
    out, (h, c) = lstm(x)
    assert out.shape == (5, 0, 8) and h.shape == c.shape == (4, 0, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_dtype_mismatch_names_both_dtypes_and_the_fix():
    lstm, cell = PeepholeLSTM(3, 4), PeepholeLSTMCell(3, 4)
    expected = re.escape("input dtype (torch.float64) does not match weight dtype (torch.float32). "
                         "Convert input: input.to(torch.float32), or convert model: model.to(torch.float64)")
    with pytest.raises(InputError, match=expected):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(InputError, match=expected):
        lstm(pack_sequence([torch.randn(4, 3, dtype=torch.float64)]))
    with pytest.raises(InputError, match=expected):
        cell(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="floating-point"):
        cell(torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("kwargs", [dict(), dict(batch_first=True), dict(num_layers=2, bidirectional=True, proj_size=2)])
def test_layer_input_and_state_shapes_are_checked(kwargs):
    lstm = PeepholeLSTM(3, 4, **kwargs)
    layout = "(batch, seq_len, 3)" if kwargs.get("batch_first") else "(seq_len, batch, 3)"
    with pytest.raises(InputError, match=re.escape(f"expected input of shape {layout}") + r".*got \[5, 2, 7\]"):
        lstm(torch.randn(5, 2, 7))
    with pytest.raises(InputError, match=re.escape("(seq_len, 3)")):
        lstm(torch.randn(5))
    n = 4 if kwargs.get("bidirectional") else 1
    out = kwargs.get("proj_size") or 4
    x = torch.randn(2, 5, 3) if kwargs.get("batch_first") else torch.randn(5, 2, 3)
    bad = (torch.zeros(n, 3, out), torch.zeros(n, 3, 4))
    expected = f"h_0 of shape ({n}, 2, {out}), c_0 of shape ({n}, 2, 4)"
    with pytest.raises(InputError, match=re.escape(expected)):
        lstm(x, bad)
    with pytest.raises(InputError, match=re.escape(expected)):
        lstm(x, (torch.zeros(n, 2, out), torch.zeros(n, 2, 5)))
    with pytest.raises(InputError, match="floating-point"):
        lstm(torch.zeros(5, 2, 3, dtype=torch.long))


def test_unbatched_state_shape_is_checked_as_unbatched():
    """Unbatched input takes 2-D states, as in nn.LSTM; the message must say so, not show a batch axis."""
    lstm = PeepholeLSTM(3, 4, num_layers=2)
    expected = "h_0 of shape (2, 4), c_0 of shape (2, 4)"
    with pytest.raises(InputError, match=re.escape(expected) + r".*got \[2, 5\] and \[2, 4\]"):
        lstm(torch.randn(5, 3), (torch.zeros(2, 5), torch.zeros(2, 4)))
    with pytest.raises(InputError, match=re.escape(expected) + r".*got \[2, 1, 4\] and \[2, 1, 4\]"):
        lstm(torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)))


def test_packed_input_feature_size_is_checked():
    lstm = PeepholeLSTM(3, 4)
    packed = pack_sequence([torch.randn(4, 7), torch.randn(2, 7)])
    with pytest.raises(InputError, match=r"PackedSequence.*3 features.*got 7"):
        lstm(packed)


def test_cell_input_and_state_shapes_are_checked():
    cell = PeepholeLSTMCell(3, 4, proj_size=2)
    with pytest.raises(InputError, match=re.escape("expected input of shape (batch, 3) or (3,)")):
        cell(torch.randn(2, 5))
    with pytest.raises(InputError, match=re.escape("expected hx of shapes (2, 2) and (2, 4)")):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)))


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script.*` is deprecated:DeprecationWarning")
def test_cell_unbatched_state_shape_is_checked_as_unbatched():
    cell = PeepholeLSTMCell(3, 4, proj_size=2)
    expected = re.escape("unbatched input expects hx of shapes (2,) and (4,)")
    with pytest.raises(InputError, match=expected + r".*got \[5\] and \[4\]"):
        cell(torch.randn(3), (torch.zeros(5), torch.zeros(4)))
    with pytest.raises(InputError, match=expected + r".*got \[1, 2\] and \[1, 4\]"):
        cell(torch.randn(3), (torch.zeros(1, 2), torch.zeros(1, 4)))
    scripted = torch.jit.script(cell)
    with pytest.raises(Exception, match=expected):
        scripted(torch.randn(3), (torch.zeros(5), torch.zeros(4)))


def test_gate_recurrence_cell_points_to_step():
    with pytest.raises(RuntimeError, match=r"cell\.step"):
        PeepholeLSTMCell(3, 4, gate_recurrence=True)(torch.randn(2, 3))


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("name", ["vanilla", "CIFG", "NIG", "NOG"])
def test_forget_bias_is_added_to_the_forget_block(name, forget_bias):
    """Init draws U(-1/sqrt(H), 1/sqrt(H)), so the forget block lies within that of forget_bias."""
    H = 16
    lstm = PeepholeLSTM(3, H, num_layers=2, bidirectional=True, forget_bias=forget_bias, **variants[name])
    f = lstm.options[0].blocks.index("f")
    bound = 1 / H**0.5
    for layer in range(2):
        for suffix in ("", "_reverse"):
            bias_ih = getattr(lstm, f"bias_ih_l{layer}{suffix}").detach().view(-1, H)
            others = torch.cat([bias_ih[:f], bias_ih[f + 1:]])
            assert others.abs().max() <= bound
            assert (bias_ih[f] - forget_bias).abs().max() <= bound
            assert getattr(lstm, f"bias_hh_l{layer}{suffix}").abs().max() <= bound
    # The forget bias moves the init away from zero; without it the block looks like any other.
    if forget_bias >= 2 * bound:
        assert bias_ih[f].min() > bound


def test_no_forget_gate_no_forget_bias_block():
    lstm = PeepholeLSTM(3, 4, forget_gate=False, forget_bias=5.0)
    assert lstm.options[0].blocks == "igo"
    assert lstm.bias_ih_l0.shape == (12,)
    assert lstm.bias_ih_l0.abs().max() <= 0.5  # 1/sqrt(4): nothing got the 5.0
    cell = PeepholeLSTMCell(3, 4, forget_gate=False, forget_bias=5.0)
    assert cell.bias_ih.abs().max() <= 0.5


def test_parameter_shapes_follow_the_layout():
    lstm = PeepholeLSTM(3, 4, proj_size=2, peephole="full", peephole_gates="o", coupled=True, gate_recurrence=True)
    shapes = {n: tuple(p.shape) for n, p in lstm.named_parameters()}
    # CIFG: blocks f, g, o; one peephole row, for the one gate asked for (o).
    assert shapes == {
        "weight_ih_l0": (12, 3), "weight_hh_l0": (12, 2), "bias_ih_l0": (12,), "bias_hh_l0": (12,),
        "weight_hr_l0": (2, 4), "weight_ch_l0": (1, 4, 4), "weight_gh_l0": (8, 8),
    }
    assert {n for n, _ in PeepholeLSTM(3, 4, peephole="none").named_parameters()} == {
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"
    }
    assert PeepholeLSTMCell(3, 4).weight_ch.shape == (3, 4)


def test_default_peephole_gates_mean_every_gate_that_exists():
    # "ifo" with gates switched off (every Greff variant, even all gates off) gives the remaining gates a
    # peephole instead of failing; peephole="none" asks for no peephole, so its gates are never checked.
    assert PeepholeLSTM(3, 4, coupled=True).options[0].peephole_rows == "fo"
    assert PeepholeLSTM(3, 4, input_gate=False, forget_gate=False, output_gate=False).options[0].peephole_rows == ""
    assert PeepholeLSTMCell(3, 4, output_gate=False, peephole_gates="ifo").weight_ch.shape == (2, 4)
    assert PeepholeLSTM(3, 4, coupled=True, peephole="none", peephole_gates="i").options[0].peephole_rows == ""
    for name, preset in variants.items():
        assert PeepholeLSTM(3, 4, **preset).options[0].peephole == preset["peephole"], name
