"""Exact-timing metrics (training/metrics.py) on hand-made outputs: exact, off by one, extra, missing."""
from __future__ import annotations

import pytest
import torch

from peephole_lstm.training.metrics import SolveRate, TimingError, timing_scores


def _seq(T, ones, value=1.0):
    x = torch.zeros(T, 1)
    for t in ones:
        x[t, 0] = value
    return x


def test_spike_train_exact_off_by_one_extra_and_missing():
    target = _seq(30, [5, 15, 25])
    inputs = _seq(30, [0])
    outputs = {
        "exact": _seq(30, [5, 15, 25], 0.9),
        "off_by_one": _seq(30, [5, 16, 25], 0.9),
        "extra": _seq(30, [5, 10, 15, 25], 0.9),
        "missing": _seq(30, [5, 15], 0.9),
        "weak": _seq(30, [5, 15, 25], 0.4),  # right steps but never crosses 0.5
    }
    preds = torch.stack(list(outputs.values()))
    solved, errors = timing_scores(preds, target.expand(5, 30, 1), inputs.expand(5, 30, 1), "spike_train")
    assert solved.tolist() == [True, False, False, False, False]
    per_seq = errors.view(5, 3)  # one error per target spike, in steps
    assert per_seq[0].tolist() == [0, 0, 0]
    assert per_seq[1].tolist() == [0, 1, 0]
    assert per_seq[2].tolist() == [0, 0, 0]  # the extra spike is half a period away from every target
    assert per_seq[4].tolist() == [0, 0, 0]  # timing right, amplitude wrong: not solved, no timing error


def test_echo_spike_reads_the_argmax_after_the_second_input_spike():
    inputs = _seq(20, [2, 6])
    target = _seq(20, [10])
    preds = torch.stack([
        _seq(20, [10], 0.3),                            # exact (the amplitude does not matter)
        _seq(20, [12], 0.8),                            # two steps late
        _seq(20, [6], 5.0) + _seq(20, [10], 0.5),       # a big output at the input spike itself is ignored
        _seq(20, [3], 5.0) + _seq(20, [9], 0.5),        # before the second spike ignored; one step early
    ])
    solved, errors = timing_scores(preds, target.expand(4, 20, 1), inputs.expand(4, 20, 1), "echo_spike")
    assert solved.tolist() == [True, False, True, False]
    assert errors.tolist() == [0, 2, 0, 1]


def test_delay_rounds_to_the_true_delay_in_steps():
    # forecast layout: one normalised value per sequence, delay = value * 50
    target = torch.tensor([49, 50, 30, 30]).float().view(4, 1, 1) / 50
    preds = torch.tensor([49.4, 49.6, 30.51, 29.0]).view(4, 1, 1) / 50
    solved, errors = timing_scores(preds, target, torch.zeros(4, 60, 1), "delay", delay_scale=50)
    assert solved.tolist() == [True, True, False, False]
    torch.testing.assert_close(errors, torch.tensor([0.4, 0.4, 0.51, 1.0]), atol=1e-4, rtol=0)


def test_delay_per_step_is_read_at_the_second_spike():
    inputs = _seq(12, [1, 4])
    target = _seq(12, range(4, 12), 3 / 10)
    pred_late = _seq(12, range(5, 12), 3 / 10)  # holds the right value, but one step too late
    pred_ok = _seq(12, range(4, 12), 3.2 / 10)
    solved, errors = timing_scores(torch.stack([pred_late, pred_ok]), target.expand(2, 12, 1),
                                   inputs.expand(2, 12, 1), "delay", delay_scale=10)
    assert solved.tolist() == [False, True]
    torch.testing.assert_close(errors, torch.tensor([3.0, 0.2]), atol=1e-5, rtol=0)


def test_metrics_accumulate_over_batches_and_reset():
    rate, error = SolveRate("echo_spike"), TimingError("echo_spike")
    inputs, target = _seq(20, [2, 6]).expand(2, 20, 1), _seq(20, [10]).expand(2, 20, 1)
    for m in (rate, error):
        m.update(torch.stack([_seq(20, [10]), _seq(20, [13])]), target, inputs)
        m.update(torch.stack([_seq(20, [10]), _seq(20, [10])]), target, inputs)
    assert rate.compute().item() == pytest.approx(3 / 4)
    assert error.compute().item() == pytest.approx(3 / 4)
    rate.reset()
    rate.update(_seq(20, [11]).unsqueeze(0), target[:1], inputs[:1])
    assert rate.compute().item() == 0.0


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="timing kind 'spikes' is not valid"):
        SolveRate("spikes")
