"""SequenceModel heads, losses, stateful TBPTT and the custom metrics, on tiny tensors."""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers.configs import compose_config
from peephole_lstm import PeepholeLSTM
from peephole_lstm.data.base import PAD_TARGET
from peephole_lstm.training.metrics import BitsPerCharacter, FrameNLL, NormalizedRMSE, masked_bce_with_logits
from peephole_lstm.training.module import (
    ModelConfigError,
    SequenceModel,
    network_arguments,
    recurrent_network,
    trust_cpu_vector_flags,
)
from peephole_lstm.training.runinfo import resolved


@functools.cache
def _default_model() -> dict:
    return resolved(compose_config("train").model)  # conf/model/peephole_lstm.yaml with the schema's keys


def model_cfg(**overrides) -> dict:
    cfg = copy.deepcopy(_default_model())
    cfg.update({"hidden_size": 8, **overrides})
    return cfg


def spec(task, input_size=3, output_size=2, horizon=1, stateful=False):
    return dict(task=task, input_size=input_size, output_size=output_size, horizon=horizon,
                target_names=[], vocab=None, stateful=stateful)


@pytest.mark.parametrize("arch", ["peephole", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_head_shapes(arch, bidirectional):
    cfg = model_cfg(arch=arch, bidirectional=bidirectional, num_layers=2)
    x = torch.randn(4, 7, 3)
    assert SequenceModel(spec("forecast", horizon=5), cfg)(x)[0].shape == (4, 5, 2)
    assert SequenceModel(spec("seq2seq"), cfg)(x)[0].shape == (4, 7, 2)
    assert SequenceModel(spec("classify", output_size=6), cfg)(x)[0].shape == (4, 6)
    if not bidirectional:
        tokens = torch.randint(0, 11, (4, 7))
        assert SequenceModel(spec("lm", input_size=11, output_size=11), cfg)(tokens)[0].shape == (4, 7, 11)


def test_forecast_reads_the_last_hidden_state():
    """Changing only the first input step changes the forecast: the head sees the whole window's state."""
    torch.manual_seed(0)
    m = SequenceModel(spec("forecast", input_size=1, output_size=1), model_cfg())
    x = torch.randn(1, 6, 1)
    y = x.clone()
    y[0, 0, 0] += 1.0
    assert not torch.allclose(m(x)[0], m(y)[0])


def test_arch_selects_the_network_and_variant_overrides_options():
    assert isinstance(recurrent_network(model_cfg(arch="lstm"), 3), torch.nn.LSTM)
    assert isinstance(recurrent_network(model_cfg(arch="gru"), 3), torch.nn.GRU)
    # peephole=none describes torch's LSTM/GRU, so it is accepted (sweeps such as arch=lstm,peephole)
    assert isinstance(recurrent_network(model_cfg(arch="gru", peephole="none"), 3), torch.nn.GRU)
    assert recurrent_network(model_cfg(arch="lstm", proj_size=2), 3).proj_size == 2
    with pytest.warns(UserWarning, match=r"model.variant=CIFG sets its own options; ignoring model.peephole='full'"):
        net = recurrent_network(model_cfg(variant="CIFG", peephole="full"), 3)
    assert isinstance(net, PeepholeLSTM)
    assert net.options[0].coupled and net.options[0].peephole == "diagonal"  # the preset wins
    assert recurrent_network(model_cfg(compile=True), 3).backend == "auto"  # compile is the whole model's


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(arch="gru", variant="NIG"), "model.variant"),
        (dict(arch="gru", peephole="full"), r"model.arch=gru \(torch.nn.GRU\) ignores model.peephole='full'"),
        (dict(arch="lstm", coupled=True, zoneout=0.1), r"ignores model.coupled=True, model.zoneout=0.1"),
        (dict(arch="gru", proj_size=2), r"model.arch=gru .* ignores model.proj_size=2"),
        (dict(arch="lstm", backend="fused"), "model.backend"),
        (dict(compile=True, backend="script"), "model.backend=script"),
        (dict(compile=True, backend="compile"), "model.backend=compile"),
        (dict(peephole_gates="xyz"), "peephole_gates"),
        (dict(coupled=True, input_gate=False), "coupled"),
        (dict(num_layers=0), "model: num_layers=0 must be an int >= 1"),
        (dict(dropout=1.5), r"model: dropout=1.5 must be a probability in \[0, 1\]"),
        (dict(arch="lstm", proj_size=8), "model: proj_size=8 must be smaller than hidden_size=8"),
    ],
)
def test_invalid_model_options_name_the_key(overrides, message):
    with pytest.raises(ModelConfigError, match=message):
        network_arguments(model_cfg(**overrides), 3)  # what a run checks before loading the data
    with pytest.raises(ModelConfigError, match=message):
        recurrent_network(model_cfg(**overrides), 3)


def test_the_config_is_checked_without_building_a_network():
    """A run validates its model config before loading the data without allocating the network: a size
    that could never be allocated (4e12 full-peephole weights) passes the check."""
    network, arguments = network_arguments(model_cfg(hidden_size=10**6, peephole="full"), 3)
    assert network is PeepholeLSTM and arguments["hidden_size"] == 10**6 and arguments["peephole"] == "full"
    assert network_arguments(model_cfg(arch="gru"), 3)[0] is torch.nn.GRU


@pytest.mark.slow  # torch.compile of the whole model
def test_compile_compiles_the_whole_model_in_place():
    """model.compile=true: the network through torch.compile (inductor, dynamic shapes), the same losses and
    gradients as the uncompiled model, the same parameter names (checkpoints load either way), and one
    graph for new lengths and batch sizes."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    plain = SequenceModel(spec("seq2seq"), model_cfg())
    compiled = SequenceModel(spec("seq2seq"), model_cfg(compile=True))
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    for m in (plain, compiled):
        m.log = m.log_dict = lambda *a, **k: None  # no Trainer attached; logging is tested by the training runs
    for batch, steps in [(4, 7), (6, 12)]:
        x, y = torch.randn(batch, steps, 3), torch.randn(batch, steps, 2)
        losses = [m.training_step((x, y), 0) for m in (plain, compiled)]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (plain, compiled))]
        for g, w in zip(*grads[::-1]):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_compile_trusts_the_cpu_flags_unless_the_user_says_otherwise(monkeypatch):
    """model.compile=true skips inductor's per-ISA compile-and-load probe (most of a cold compile on CPU),
    but an explicit TORCHINDUCTOR_VEC_ISA_OK is the user's choice and stays."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "vec_isa_ok", None)
    monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
    trust_cpu_vector_flags()
    assert inductor_config.cpp.vec_isa_ok is None
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK")
    SequenceModel(spec("seq2seq"), model_cfg())
    assert inductor_config.cpp.vec_isa_ok is None  # only compiling models change it
    SequenceModel(spec("seq2seq"), model_cfg(compile=True))
    assert inductor_config.cpp.vec_isa_ok is True


def test_lm_rejects_bidirectional():
    with pytest.raises(ModelConfigError, match="bidirectional"):
        SequenceModel(spec("lm", input_size=5, output_size=5), model_cfg(bidirectional=True))


# ----------------------------------------------------------------------------- multilabel (data=jsb_chorales)
def _bernoulli_nll(z: float, y: float) -> float:
    """-log P(y | sigmoid(z)) in float64, from the definition."""
    p = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


# two sequences of 3 frames, 2 outputs; the second sequence is 2 frames long, its frame 2 is padding
LOGITS = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [-3.0, 1.5]],
                       [[-0.25, 0.75], [1.0, -2.0], [9.0, -9.0]]])
TARGET = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                       [[0.0, 0.0], [1.0, 0.0], [PAD_TARGET, PAD_TARGET]]])


def _by_hand() -> tuple[float, int]:
    """(sum over the real frames and outputs of the Bernoulli NLL, number of real frames)"""
    total, frames = 0.0, 0
    for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        total += sum(_bernoulli_nll(LOGITS[b, t, k].item(), TARGET[b, t, k].item()) for k in range(2))
        frames += 1
    return total, frames


def test_frame_nll_and_loss_match_the_formula_by_hand():
    total, frames = _by_hand()
    nll = FrameNLL()
    nll.update(LOGITS, TARGET)
    assert nll.compute().item() == pytest.approx(total / frames, rel=1e-6)  # summed over keys, mean over frames
    assert masked_bce_with_logits(LOGITS, TARGET).item() == pytest.approx(total / (frames * 2), rel=1e-6)
    # over batches the frames are pooled, not the batch means averaged: 3 + 2 frames, not (mean + mean) / 2
    split = FrameNLL()
    split.update(LOGITS[:1], TARGET[:1])
    split.update(LOGITS[1:], TARGET[1:])
    assert split.compute().item() == pytest.approx(total / frames, rel=1e-6)


def test_padded_frames_change_neither_loss_nor_metric_nor_gradient():
    logits = LOGITS.clone().requires_grad_()
    loss = masked_bce_with_logits(logits, TARGET)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[1, 2].eq(0).all() and grad[0].ne(0).all() and grad[1, :2].ne(0).all()
    other = LOGITS.clone()
    other[1, 2] = torch.tensor([-50.0, 50.0])  # whatever the model says after a sequence's end
    assert masked_bce_with_logits(other, TARGET).item() == loss.item()
    a, b = FrameNLL(), FrameNLL()
    a.update(LOGITS, TARGET)
    b.update(other, TARGET)
    assert a.compute().item() == b.compute().item()
    # a batch of the real frames alone scores the same
    c = FrameNLL()
    c.update(LOGITS[:1], TARGET[:1])
    c.update(LOGITS[1:, :2], TARGET[1:, :2])
    assert c.compute().item() == pytest.approx(a.compute().item(), rel=1e-7)


def test_multilabel_head_loss_and_refused_bidirectional():
    torch.manual_seed(0)
    m = SequenceModel(spec("multilabel", input_size=2, output_size=2), model_cfg())
    m.log = lambda *a, **k: None  # no Trainer attached; logging is tested by the training runs
    x = torch.zeros(2, 3, 2)
    logits = m(x)[0]
    assert logits.shape == (2, 3, 2)  # one logit per output and step
    torch.testing.assert_close(m.training_step((x, TARGET), 0), masked_bce_with_logits(logits, TARGET))
    with pytest.raises(ModelConfigError, match="bidirectional=true would let a multilabel model see the next frame"):
        SequenceModel(spec("multilabel", input_size=2, output_size=2), model_cfg(bidirectional=True))


class _HostReads(TorchDispatchMode):
    """Records the ops that make the host wait for a GPU: reading a value back (.item(), int(),
    bool(tensor)) and boolean indexing (nonzero: the result's size is data)."""

    WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("task", ["multilabel", "forecast", "classify"])
def test_training_and_validation_steps_never_wait_for_the_device(task):
    # On a GPU each such read stalls the host once a step; here the ops that would are recorded on CPU.
    torch.manual_seed(0)
    m = SequenceModel(spec(task, input_size=2, output_size=2), model_cfg())
    m.log = m.log_dict = lambda *a, **k: None  # Lightning's logging is its own; this checks the model's step
    x = torch.zeros(2, 3, 2)
    y = {"multilabel": TARGET, "forecast": torch.randn(2, 1, 2), "classify": torch.tensor([0, 1])}[task]
    with _HostReads() as reads:
        m.training_step((x, y), 0).backward()
        m.validation_step((x, y), 0)
    assert reads.seen == []
    # and the step's loss reached the epoch's mean (the same batch in both stages; the weighting over a
    # split is checked end to end by tests/data/test_jsb_chorales.py: 88 x val/loss = val/nll)
    assert m.loss_means["train_loss"].compute().item() == pytest.approx(m.loss_means["val_loss"].compute().item())


@pytest.mark.parametrize("arch", ["peephole", "gru"])
def test_stateful_lm_carries_detached_state_and_resets_each_epoch(arch):
    torch.manual_seed(0)
    m = SequenceModel(spec("lm", input_size=5, output_size=5, stateful=True), model_cfg(arch=arch))
    m.log = lambda *a, **k: None  # no Trainer attached; logging is tested by the training runs
    a, b = torch.randint(0, 5, (2, 3, 6))
    m.training_step((a, a), 0)
    carried = m._carried["train"]
    first = carried[0] if isinstance(carried, tuple) else carried
    assert not first.requires_grad
    # the second batch starts from the carried state: same as running both batches as one sequence
    with torch.no_grad():
        joint = m(torch.cat([a, b], 1))[0][:, 6:]
        cont = m(b, m._carried["train"])[0]
    assert torch.allclose(joint, cont, atol=1e-5)
    m.on_train_epoch_start()
    assert "train" not in m._carried


def test_nrmse_matches_its_definition_over_batches():
    torch.manual_seed(0)
    preds, target = torch.randn(50, 3, 2), torch.randn(50, 3, 2) * 2 + 1
    metric = NormalizedRMSE()
    for p, t in zip(preds.split(7), target.split(7)):
        metric.update(p, t)
    rmse = torch.sqrt(((preds - target) ** 2).mean())
    assert metric.compute().item() == pytest.approx((rmse / target.std(unbiased=False)).item(), rel=1e-5)
    # predicting the mean scores 1
    mean_pred = NormalizedRMSE()
    mean_pred.update(torch.full_like(target, target.mean().item()), target)
    assert mean_pred.compute().item() == pytest.approx(1.0, rel=1e-5)


def test_bits_per_character_is_cross_entropy_in_bits():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 9, 7), torch.randint(0, 7, (4, 9))
    metric = BitsPerCharacter()
    metric.update(logits[:2], target[:2])
    metric.update(logits[2:], target[2:])
    ce = F.cross_entropy(logits.reshape(-1, 7), target.reshape(-1)).item()
    assert metric.compute().item() == pytest.approx(ce / math.log(2), rel=1e-5)
    uniform = BitsPerCharacter()
    uniform.update(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long))
    assert uniform.compute().item() == pytest.approx(3.0, rel=1e-6)  # log2(8)


def test_variant_over_default_options_is_silent():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = recurrent_network(model_cfg(variant="NP"), 3)
    assert net.options[0].peephole == "none"
