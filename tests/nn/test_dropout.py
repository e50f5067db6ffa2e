"""Dropout between layers, as nn.LSTM: only in training, never after the last layer."""
from __future__ import annotations

import warnings

import pytest
import torch

from .helpers import make_lstm


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    lstm = make_lstm(3, 8, num_layers=2, dropout=0.5)
    plain = make_lstm(3, 8, num_layers=2)
    plain.load_state_dict(lstm.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(lstm.eval()(x)[0], plain(x)[0], rtol=0, atol=0)
    lstm.train()
    a, b = lstm(x)[0], lstm(x)[0]
    assert not torch.equal(a, b)
    # The first layer's state is untouched by dropout (it acts on layer 1's input, not on its states).
    h_n = lstm(x)[1][0]
    torch.testing.assert_close(h_n[0], plain(x)[1][0][0], rtol=0, atol=0)
    assert not torch.equal(h_n[1], plain(x)[1][0][1])


def test_full_dropout_feeds_zeros_to_the_next_layer():
    """With p=1 the second layer sees only zeros: its output equals that of a zero input."""
    lstm = make_lstm(3, 8, num_layers=2, dropout=1.0).train()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    second = make_lstm(8, 8)
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in lstm.state_dict().items() if "_l1" in k})
    torch.testing.assert_close(lstm(x)[0], second(torch.zeros(6, 4, 8, dtype=torch.float64))[0], rtol=0, atol=0)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.3 has no effect with num_layers=1"):
        make_lstm(3, 8, dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_lstm(3, 8, num_layers=2, dropout=0.3)
