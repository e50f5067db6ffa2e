"""Zoneout (Krueger et al. 2016): in training each unit of h and c keeps its previous value with
probability p, otherwise takes the ordinary update; in eval the two are mixed by p (the expectation)."""
from __future__ import annotations

import copy

import pytest
import torch

from .helpers import make_cell, make_lstm

IN, HID = 3, 50


def _one_step(p, batch, proj_size=0, seed=0):
    """A zoneout cell and an otherwise identical cell without zoneout, and one step's inputs."""
    torch.manual_seed(seed)
    cell = make_cell(IN, HID, zoneout=p, proj_size=proj_size)
    plain = make_cell(IN, HID, proj_size=proj_size)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(batch, IN, dtype=torch.float64)
    h = torch.randn(batch, proj_size or HID, dtype=torch.float64)
    c = torch.randn(batch, HID, dtype=torch.float64)
    return cell, plain(x, (h, c)), (x, h, c)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("proj_size", [0, 10])
def test_training_keeps_a_fraction_p_of_units(p, proj_size):
    cell, (h_plain, c_plain), (x, h, c) = _one_step(p, batch=200, proj_size=proj_size)
    h_new, c_new = cell.train()(x, (h, c))
    for new, prev, plain in ((h_new, h, h_plain), (c_new, c, c_plain)):
        kept = new == prev
        # Every unit is either its previous value or exactly the ordinary update, nothing in between.
        assert torch.all(kept | (new == plain))
        # >= 2000 units each: 5 standard deviations of a binomial fraction are below 0.06.
        assert abs(kept.double().mean().item() - p) < 0.06
    if not proj_size:  # same shape: h and c draw their own masks
        assert not torch.equal(h_new == h, c_new == c)


def test_training_masks_differ_between_calls_and_average_to_eval():
    p = 0.3
    cell, (h_plain, c_plain), (x, h, c) = _one_step(p, batch=1)
    rows = 4000
    x, h, c = (t.expand(rows, -1) for t in (x, h, c))
    h_train, c_train = cell.train()(x, (h, c))
    h_eval, c_eval = cell.eval()(x[:1], (h[:1], c[:1]))
    # Loose bound: each mean is over 4000 Bernoulli draws scaled by |prev - plain|.
    for train, ev, prev, plain in ((h_train, h_eval, h[:1], h_plain), (c_train, c_eval, c[:1], c_plain)):
        assert not torch.all(train == train[:1]), "every row drew the same mask"
        tol = 0.05 * (prev - plain).abs() + 1e-12
        assert torch.all((train.mean(0, keepdim=True) - ev).abs() <= tol)


@pytest.mark.parametrize("proj_size", [0, 10])
def test_eval_is_the_expectation(proj_size):
    p = 0.35
    cell, (h_plain, c_plain), (x, h, c) = _one_step(p, batch=4, proj_size=proj_size)
    h_new, c_new = cell.eval()(x, (h, c))
    torch.testing.assert_close(h_new, (1 - p) * h_plain + p * h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_new, (1 - p) * c_plain + p * c, rtol=1e-12, atol=1e-12)


def test_layer_in_training_holds_units_across_steps():
    """Over a sequence, a fraction p of h's units stay at the previous step's value at each step."""
    p = 0.25
    torch.manual_seed(0)
    lstm = make_lstm(IN, HID, zoneout=p, num_layers=2, bidirectional=True).train()
    x = torch.randn(12, 20, IN, dtype=torch.float64)
    out, _ = lstm(x)
    forward = out[..., :HID]
    held = (forward[1:] == forward[:-1]).double().mean().item()
    assert abs(held - p) < 0.03
    backward = out[..., HID:]
    held = (backward[:-1] == backward[1:]).double().mean().item()
    assert abs(held - p) < 0.03
    # Two training passes draw different masks; eval is deterministic.
    assert not torch.equal(lstm(x)[0], out)
    lstm.eval()
    torch.testing.assert_close(lstm(x)[0], copy.deepcopy(lstm)(x)[0], rtol=0, atol=0)
