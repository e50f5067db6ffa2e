"""The task metrics that torchmetrics does not ship: NRMSE, bits per character, frame NLL, exact timing.

They keep sums as states (reduced by summation across DDP ranks), so the value over a whole split is
exact, not an average of per-batch values.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class NormalizedRMSE(Metric):
    """NRMSE = RMSE / std(targets): sqrt(mean((pred - y)^2)) / sqrt(mean((y - mean(y))^2)).

    Both means run over every target value of the evaluated split (all windows, horizon steps and
    target columns pooled), with the population std. 0 is perfect; 1 is what always predicting the
    split's mean scores. Being a ratio it is the same in normalised and original units for one target.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # float64: sums of squares over a whole split lose digits in float32.
        for name in ("sum_squared_error", "sum_target", "sum_squared_target", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"NormalizedRMSE: preds {list(preds.shape)} and target {list(target.shape)} differ")
        preds, target = preds.detach().double(), target.detach().double()
        self.sum_squared_error += ((preds - target) ** 2).sum()
        self.sum_target += target.sum()
        self.sum_squared_target += (target**2).sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        mean = self.sum_target / self.count
        variance = (self.sum_squared_target / self.count - mean**2).clamp_min(0.0)
        return (torch.sqrt(self.sum_squared_error / self.count) / torch.sqrt(variance)).float()


class _MeanNats(Metric):
    """A sum of negative log-likelihoods in nats over a count of items (characters, frames), both in float64
    and summed across DDP ranks, so that the mean over a whole split is exact."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def mean_nats(self) -> Tensor:
        return self.sum_nats / self.count


class BitsPerCharacter(_MeanNats):
    """Mean cross-entropy of the next-character prediction in bits: CE / ln 2 (CE in nats)."""

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits (..., vocab), target (...) of class indices."""
        nats = torch.nn.functional.cross_entropy(
            logits.detach().reshape(-1, logits.shape[-1]).double(), target.reshape(-1), reduction="sum"
        )
        self.sum_nats += nats
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.mean_nats() / math.log(2.0)).float()


# ----------------------------------------------------------------------------- multi-label sequences
def valid_frames(target: Tensor) -> Tensor:
    """(B, T) bool: the frames of a multilabel target (B, T, K) that are real, not padding (the datamodule
    pads a batch's shorter sequences with PAD_TARGET = -1 on every output of a frame; data/base.py)."""
    return target[..., 0] >= 0


def masked_bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of independent Bernoullis with these logits, in nats, averaged over every output
    of every real frame (padded frames left out): the multilabel training loss, = FrameNLL / K."""
    return _masked_bce_sum(logits, target) / (valid_frames(target).sum() * target.shape[-1]).clamp_min(1)


def _masked_bce_sum(logits: Tensor, target: Tensor) -> Tensor:
    """The Bernoulli NLL summed over the outputs of the real frames. Padded frames are multiplied by zero,
    not indexed out: a boolean index waits for the GPU every step to learn the result's size."""
    nats = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.clamp_min(0), reduction="none")
    return (nats * valid_frames(target).unsqueeze(-1)).sum()


class FrameNLL(_MeanNats):
    """Frame-level negative log-likelihood in nats, as Boulanger-Lewandowski et al. (2012) and Greff et al.
    (2017) report it for polyphonic music:

        NLL = (1 / F) * sum over real frames f, sum over outputs k of
              -[y_fk * log(sigmoid(z_fk)) + (1 - y_fk) * log(1 - sigmoid(z_fk))]

    with logits z, targets y in {0, 1}, K outputs (88 keys) and F the number of real (not padded) frames
    of the split: the Bernoulli NLL summed over the keys of a frame, averaged over frames. Sums are kept
    in float64 and reduced across DDP ranks, so the value is exact over the whole split.
    """

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits and target (B, T, K); target in {0, 1}, or PAD_TARGET on every output of a padded frame."""
        if logits.shape != target.shape:
            raise ValueError(f"FrameNLL: logits {list(logits.shape)} and target {list(target.shape)} differ")
        self.sum_nats += _masked_bce_sum(logits.detach().double(), target.double())
        self.count += valid_frames(target).sum()  # real frames

    def compute(self) -> Tensor:
        return self.mean_nats().float()


# ----------------------------------------------------------------------------- exact timing
def _last_spike(inputs: Tensor) -> Tensor:
    """(B,) index of the last non-zero step of the first input channel (the second MSD spike)."""
    steps = torch.arange(inputs.shape[1], device=inputs.device)
    return torch.where(inputs[..., 0] != 0, steps, -1).max(dim=1).values


def timing_scores(preds: Tensor, target: Tensor, inputs: Tensor, kind: str, delay_scale: float = 1.0,
                  delay_offset: float = 0.0):
    """Exact-timing scores of one batch: (solved (B,) bool, absolute timing errors in steps (N,)).

    - ``delay`` (MSD): the delay is read from the output, steps = output * delay_scale + delay_offset: from a
      forecast's single value, or per step at the second input spike (where the paper gives the target).
      Solved: it rounds to the true delay. Error: |predicted - true delay| per sequence.
    - ``echo_spike`` (MSD emitting a spike): the output's argmax after the last input spike. Solved: it is
      the target spike's step. Error: |argmax - target step| per sequence.
    - ``spike_train`` (GTS): solved: the output is above 0.5 at every target spike step and nowhere else.
      Error: per target spike, |step of the output's maximum less than half a period from it - spike step|.
    """
    preds, target = preds.detach().float(), target.detach().float()
    if kind == "delay":
        if preds.shape[1] == 1:  # one value per sequence
            p, y = preds[:, 0, 0], target[:, 0, 0]
        else:
            at = _last_spike(inputs).clamp_min(0)
            rows = torch.arange(preds.shape[0], device=preds.device)
            p, y = preds[rows, at, 0], target[rows, at, 0]
        p, y = p * delay_scale + delay_offset, y * delay_scale + delay_offset
        return torch.round(p) == torch.round(y), (p - y).abs()
    if kind == "echo_spike":
        steps = torch.arange(preds.shape[1], device=preds.device)
        after = steps[None, :] > _last_spike(inputs)[:, None]
        got = torch.where(after, preds[..., 0], float("-inf")).argmax(dim=1)
        want = target[..., 0].argmax(dim=1)
        return got == want, (got - want).abs().float()
    if kind == "spike_train":
        solved = ((preds[..., 0] > 0.5) == (target[..., 0] > 0.5)).all(dim=1)
        errors = []
        for p, y in zip(preds[..., 0], target[..., 0]):
            spikes = (y > 0.5).nonzero().flatten()
            # strictly less than half a period either side: a step half-way belongs to neither spike
            radius = (int(torch.diff(spikes).min()) - 1) // 2 if len(spikes) > 1 else p.shape[0]
            for t in spikes.tolist():
                lo = max(0, t - radius)
                window = p[lo:t + radius + 1] if radius else p[t:t + 1]
                errors.append(abs(lo + int(window.argmax()) - t))
        return solved, torch.tensor(errors, dtype=torch.float32, device=preds.device)
    raise ValueError(f"timing kind {kind!r} is not valid; allowed values: 'delay', 'echo_spike', 'spike_train'")


class _TimingMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, kind: str, delay_scale: float = 1.0, delay_offset: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        timing_scores(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), kind)  # validates kind
        self.kind, self.delay_scale, self.delay_offset = kind, delay_scale, delay_offset
        for name in ("solved", "sequences", "sum_error", "events"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, inputs: Tensor) -> None:
        solved, errors = timing_scores(preds, target, inputs, self.kind, self.delay_scale, self.delay_offset)
        self.solved += solved.sum()
        self.sequences += solved.numel()
        self.sum_error += errors.double().sum()
        self.events += errors.numel()


class SolveRate(_TimingMetric):
    """Fraction of sequences whose timing is exactly right (see `timing_scores`). 1 is perfect."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return (self.solved / self.sequences).float()


class TimingError(_TimingMetric):
    """Mean absolute timing error in steps (see `timing_scores`). 0 is perfect."""

    higher_is_better = False

    def compute(self) -> Tensor:
        return (self.sum_error / self.events).float()
