"""SequenceModel: a recurrent network (peephole LSTM, nn.LSTM or nn.GRU) with a head for the task.

Built from the datamodule's TaskSpec and the `model` config; both are saved as plain dicts in the
checkpoint's hyper-parameters, so `SequenceModel.load_from_checkpoint(path, weights_only=True)`
rebuilds it without running code from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any

import hydra.utils
import lightning.pytorch as pl
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from peephole_lstm import PeepholeLSTM, variants
from peephole_lstm.nn.layer import check_layer_arguments
from peephole_lstm.nn.options import CELL_OPTIONS, CellOptions
from peephole_lstm.training.errors import ConfigError
from peephole_lstm.training.metrics import (
    BitsPerCharacter,
    FrameNLL,
    NormalizedRMSE,
    SolveRate,
    TimingError,
    masked_bce_with_logits,
    valid_frames,
)

# The options' defaults, to tell the options a user set from the ones a variant preset may replace.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CellOptions)}


class ModelConfigError(ConfigError):
    """A `model.*` setting that is invalid on its own or for this task; the message names the key."""


def network_arguments(cfg: dict, input_size: int) -> tuple[type[nn.Module], dict]:
    """The batch-first recurrent network the model config describes, as its class and keyword arguments,
    every option checked as its constructor would check it (ModelConfigError naming the key) without
    building it: a run validates its config this way before the data is loaded."""
    common = dict(
        input_size=input_size, hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"], bias=cfg["bias"],
        batch_first=True, dropout=cfg["dropout"], bidirectional=cfg["bidirectional"],
    )
    arch = cfg["arch"]
    if arch != "peephole":
        # torch's LSTM/GRU have none of PeepholeLSTM's options: one set by the user would be ignored
        # silently, and a sweep over it would report identical models under different labels.
        ignored = [f"model.{k}={cfg[k]!r}" for k in CELL_OPTIONS
                   if cfg[k] != _DEFAULTS[k] and not (k == "proj_size" and arch == "lstm")
                   and not (k == "peephole" and cfg[k] == "none")]
        if ignored:
            raise ModelConfigError(
                f"model.arch={arch} (torch.nn.{'LSTM' if arch == 'lstm' else 'GRU'}) ignores {', '.join(ignored)}: "
                f"these options exist for model.arch=peephole only; drop them or use model.arch=peephole"
            )
        if cfg.get("variant") is not None:
            raise ModelConfigError(f"model.variant={cfg['variant']} needs model.arch=peephole (got arch={arch})")
        if cfg["backend"] != "auto":
            raise ModelConfigError(
                f"model.backend selects PeepholeLSTM kernels; arch={arch} uses torch's own kernels"
            )
        # torch checks the same sizes and dropout; these checks name the key (and are user errors).
        _check(common, dict(proj_size=cfg["proj_size"]))
        if arch == "lstm":
            return nn.LSTM, dict(common, proj_size=cfg["proj_size"])
        return nn.GRU, common  # proj_size was refused above
    options = {k: cfg[k] for k in CELL_OPTIONS}
    if cfg.get("variant") is not None:
        preset = variants[cfg["variant"]]
        # The preset wins; say so when it silently replaces a value the user changed from its default.
        ignored = [f"model.{k}={options[k]!r}" for k, v in preset.items()
                   if options[k] != v and options[k] != _DEFAULTS[k]]
        if ignored:
            warnings.warn(f"model.variant={cfg['variant']} sets its own options; ignoring {', '.join(ignored)}")
        options.update(preset)
    backend = cfg["backend"]
    if cfg["compile"] and backend not in ("auto", "fused"):
        raise ModelConfigError(
            f"model.compile=true compiles the whole network, each layer one operator (model.backend=auto or "
            f"fused); model.backend={backend} runs a per-step loop, which the compiled graph would unroll"
        )
    _check(common, options, backend)
    return PeepholeLSTM, dict(common, **options, backend=backend)


def _check(common: dict, options: dict, backend: str = "auto") -> None:
    """PeepholeLSTM's constructor's checks (the layer's arguments, then CellOptions), as ModelConfigErrors."""
    try:
        check_layer_arguments(common["num_layers"], common["batch_first"], common["dropout"],
                              common["bidirectional"], backend)
        CellOptions(common["input_size"], common["hidden_size"], common["bias"], **options)
    except ValueError as e:
        raise ModelConfigError(f"model: {e}") from e


def recurrent_network(cfg: dict, input_size: int) -> nn.Module:
    """The batch-first recurrent network the model config describes (see network_arguments)."""
    network, arguments = network_arguments(cfg, input_size)
    return network(**arguments)


def task_loss(task: str, pred: Tensor, y: Tensor) -> Tensor:
    """The training loss per task (module docstring); also what scripts/export.py checks ONNX models on."""
    if task in ("forecast", "seq2seq"):
        return F.mse_loss(pred, y)
    if task == "multilabel":
        return masked_bce_with_logits(pred, y)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))


def _detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _state_batch_size(state) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[1]


def trust_cpu_vector_flags() -> None:
    """Skip inductor's compile-and-load probe of each vector ISA the CPU reports (AVX2, AVX-512, ...), unless
    TORCHINDUCTOR_VEC_ISA_OK is set. The probe builds a test library per ISA with the C++ compiler on the
    first CPU compilation on a machine (about 10 s on the 2-core VM, more than the model's own 4-5 s
    compile at the medium shape; later processes only load the libraries, about 1 s; docs/export.md);
    the list it checks is already filtered by the CPU's own flags, and this package's C++ kernel builds
    with -march=native on the same compiler. TORCHINDUCTOR_VEC_ISA_OK=0 brings the probe back."""
    if os.environ.get("TORCHINDUCTOR_VEC_ISA_OK") is None:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.vec_isa_ok = True


class SequenceModel(pl.LightningModule):
    """Recurrent network + task head; losses and metrics per docs/configuration.md ("Tasks and heads", "Metrics").

    forecast: linear map from the last hidden state to (horizon, output_size); MSE loss.
    seq2seq:  per-step linear map from the outputs; MSE loss.
    classify: linear map from the last hidden state to class logits; cross-entropy.
    lm:       embedding -> RNN -> per-step logits over the vocabulary; cross-entropy. With
              spec["stateful"] the (detached) state is carried across batches and reset each epoch.
    multilabel: per-step linear map to one logit per output (independent Bernoullis, e.g. the 88 keys of
              a piano roll's next frame); binary cross-entropy per output, padded frames left out.
    """

    def __init__(self, spec: dict, model: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec, self.cfg = spec, model
        self.task = spec["task"]
        # Both predict the next step, which is the next input: the backward direction would read it.
        if self.task == "lm" and model["bidirectional"]:
            raise ModelConfigError("model.bidirectional=true would let a language model see the next character")
        if self.task == "multilabel" and model["bidirectional"]:
            raise ModelConfigError("model.bidirectional=true would let a multilabel model see the next frame, its target")
        if self.task == "lm":
            self.embedding = nn.Embedding(spec["input_size"], model["embedding_dim"])
            rnn_input = model["embedding_dim"]
        else:
            rnn_input = spec["input_size"]
        self.rnn = recurrent_network(model, rnn_input)
        directions = 2 if model["bidirectional"] else 1
        width = (model["proj_size"] or model["hidden_size"]) * directions
        outputs = spec["output_size"] * (spec.get("horizon", 1) if self.task == "forecast" else 1)
        self.head = nn.Sequential(nn.Dropout(model["head_dropout"]), nn.Linear(width, outputs))
        self._carried: dict[str, Any] = {}
        self.run_config: dict | None = None  # the full resolved config, stored in checkpoints for eval.py
        self.metrics = nn.ModuleDict({stage: self._metrics() for stage in ("val", "test")})
        # The epoch's loss: the batches' losses weighted by their size (below), summed across DDP ranks by
        # torchmetrics. No NaN check: it would wait for the GPU every step (a NaN loss shows as NaN).
        # (Keyed "<stage>_loss": a module may not be named "train".)
        self.loss_means = nn.ModuleDict({f"{stage}_loss": MeanMetric(nan_strategy="disable")
                                         for stage in ("train", "val", "test")})
        # Timing tasks also score exact timing; these metrics read the inputs too (where the spikes are).
        timing = spec.get("timing")
        delay = (spec.get("delay_scale", 1.0), spec.get("delay_offset", 0.0))
        self.timing = nn.ModuleDict({
            stage: MetricCollection({"solve_rate": SolveRate(timing, *delay), "timing_error": TimingError(timing, *delay)},
                                    compute_groups=False)
            for stage in ("val", "test")
        }) if timing else None
        if model["compile"]:
            trust_cpu_vector_flags()
            # The whole network (embedding, recurrent layers as one operator each, head) through
            # torch.compile, in place so that parameter names and checkpoints stay those of the
            # uncompiled model; dynamic shapes, so a new sequence length or batch size reuses the graph.
            self.compile(dynamic=True)

    def _metrics(self) -> MetricCollection:
        if self.task in ("forecast", "seq2seq"):
            return MetricCollection(
                {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "nrmse": NormalizedRMSE()}, compute_groups=False
            )
        if self.task == "classify":
            return MetricCollection({"acc": MulticlassAccuracy(self.spec["output_size"], average="micro")})
        if self.task == "multilabel":
            return MetricCollection({"nll": FrameNLL()})
        return MetricCollection({"bpc": BitsPerCharacter(), "ppl": Perplexity()})

    # ------------------------------------------------------------------ forward
    def _last_state(self, h_n: Tensor) -> Tensor:
        """(batch, features) of the last layer's final hidden state, both directions concatenated."""
        directions = 2 if self.cfg["bidirectional"] else 1
        last = h_n[-directions:]  # (directions, batch, hidden)
        return last.transpose(0, 1).reshape(last.shape[1], -1)

    def forward(self, x: Tensor, state=None):
        """Returns (predictions, final state). Predictions: forecast (B, horizon, out), seq2seq (B, T, out),
        classify (B, classes), lm (B, T, vocab), multilabel (B, T, out) logits."""
        if self.task == "lm":
            x = self.embedding(x)
        out, state = self.rnn(x, state)
        h_n = state[0] if isinstance(state, tuple) else state
        if self.task == "forecast":
            y = self.head(self._last_state(h_n))
            return y.view(x.shape[0], self.spec["horizon"], self.spec["output_size"]), state
        if self.task == "classify":
            return self.head(self._last_state(h_n)), state
        return self.head(out), state

    def _step(self, batch, stage: str):
        x, y = batch
        state = None
        if self.spec.get("stateful"):
            state = self._carried.get(stage)
            if state is not None and _state_batch_size(state) != x.shape[0]:
                state = None  # a short final batch starts new streams
        pred, state = self(x, state)
        if self.spec.get("stateful"):
            self._carried[stage] = _detach(state)
        loss = task_loss(self.task, pred, y)
        # The epoch's loss is the mean of the batches' weighted by this: for multilabel the real frames (the
        # loss is a mean over them), which makes it the exact per-key mean over the split's frames. A
        # tensor, so that counting the frames does not wait for the GPU.
        weight = valid_frames(y).sum() if self.task == "multilabel" else x.shape[0]
        loss_mean = self.loss_means[f"{stage}_loss"]
        loss_mean.update(loss.detach(), weight)
        # Epoch means only: logging per step too would rename the metric to train/loss_step / _epoch.
        self.log(f"{stage}/loss", loss_mean, prog_bar=True, on_step=False, on_epoch=True)
        if stage != "train":
            metrics = self.metrics[stage]
            metrics.update(pred, y)
            self.log_dict({f"{stage}/{k}": m for k, m in metrics.items()}, on_epoch=True, batch_size=x.shape[0])
            if self.timing is not None:
                timing = self.timing[stage]
                timing.update(pred, y, x)
                self.log_dict({f"{stage}/{k}": m for k, m in timing.items()}, on_epoch=True, batch_size=x.shape[0])
        return loss, pred

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0])[0]

    def _reset_state(self, stage: str) -> None:
        self._carried.pop(stage, None)

    def on_train_epoch_start(self) -> None:
        self._reset_state("train")

    def on_validation_epoch_start(self) -> None:
        self._reset_state("val")

    def on_test_epoch_start(self) -> None:
        self._reset_state("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config

    # ------------------------------------------------------------------ optimisation
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Training longer (`ckpt_path=last trainer.max_epochs=N`): the scheduler state in the checkpoint still
        # holds the old horizon (CosineAnnealingLR's T_max follows trainer.max_epochs), and Lightning restores
        # it after this hook. The horizon of this run's config goes into that state; for cosine annealing the
        # learning rate also goes to what a run configured for N epochs has at this epoch (the closed form),
        # since the old schedule may already have reached eta_min, from which its recursion never rises.
        scheduler = self.cfg.get("scheduler") or {}
        optimizers = checkpoint.get("optimizer_states") or []
        for i, state in enumerate(checkpoint.get("lr_schedulers") or []):
            changed = False
            for key in ("T_max", "total_steps", "total_iters"):
                if key in state and scheduler.get(key) is not None and state[key] != scheduler[key]:
                    state[key], changed = scheduler[key], True
            if changed and {"T_max", "eta_min", "base_lrs", "last_epoch"} <= state.keys():
                progress = math.cos(math.pi * min(state["last_epoch"], state["T_max"]) / state["T_max"])
                lrs = [state["eta_min"] + (base - state["eta_min"]) * (1 + progress) / 2 for base in state["base_lrs"]]
                state["_last_lr"] = lrs
                if i < len(optimizers):
                    for group, lr in zip(optimizers[i]["param_groups"], lrs):
                        group["lr"] = lr

    def configure_optimizers(self):
        optimizer = hydra.utils.instantiate(self.cfg["optimizer"])(params=self.parameters(), lr=self.cfg["lr"])
        if not self.cfg.get("scheduler"):
            return optimizer
        scheduler = hydra.utils.instantiate(self.cfg["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.cfg["scheduler_monitor"]}}

