"""Structured config schemas: Hydra validates every override against these before anything runs.

Choices are Enums built from the library's own option lists, so `model.peephole=diagnol` fails at
composition with "Invalid value 'diagnol', expected one of [none, diagonal, full]" and the key name;
typed fields reject `model.hidden_size=big`; struct mode rejects unknown keys. The groups whose keys
are constructor arguments of a `_target_` (data, trainer, logger, callbacks, optimizer, scheduler) are
checked against those signatures by `peephole_lstm.training.checks` before the data is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from peephole_lstm.nn.options import ACTIVATIONS, BACKENDS, OUTPUT_PEEPHOLES, PEEPHOLES, variants


def _choices(name: str, values) -> type[Enum]:
    # str mix-in: members compare equal to their names, and OmegaConf prints the allowed values.
    return Enum(name, {v: v for v in values}, type=str)


Arch = _choices("Arch", ("peephole", "lstm", "gru"))
Peephole = _choices("Peephole", PEEPHOLES)
OutputPeephole = _choices("OutputPeephole", OUTPUT_PEEPHOLES)
Activation = _choices("Activation", ACTIVATIONS)
Backend = _choices("Backend", BACKENDS)
Variant = _choices("Variant", variants)


@dataclass
class ModelConfig:
    """The recurrent network, its task head and its optimisation (see docs/configuration.md)."""

    arch: Arch = Arch.peephole  # peephole: peephole_lstm.PeepholeLSTM; lstm / gru: torch.nn baselines
    variant: Optional[Variant] = None  # a Greff et al. preset; its options override the ones below
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0  # between recurrent layers, as in nn.LSTM
    bidirectional: bool = False
    proj_size: int = 0
    bias: bool = True
    # PeepholeLSTM options (arch=peephole only; the nn.LSTM / nn.GRU baselines have none of them)
    peephole: Peephole = Peephole.diagonal
    peephole_gates: str = "ifo"
    output_peephole: OutputPeephole = OutputPeephole.current
    coupled: bool = False
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: Activation = Activation.tanh
    output_activation: Activation = Activation.tanh
    gate_recurrence: bool = False
    forget_bias: float = 1.0
    cell_clip: Optional[float] = None
    layer_norm: bool = False
    zoneout: float = 0.0
    backend: Backend = Backend.auto
    compile: bool = False  # torch.compile the whole network (docs/export.md says when it pays off)
    # task heads
    embedding_dim: int = 32  # lm: character embedding size
    head_dropout: float = 0.0  # dropout on the recurrent features before the output layer
    # optimisation: `optimizer` / `scheduler` are partials instantiated with the parameters / optimizer
    lr: float = 3e-3
    optimizer: Any = field(
        default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True, "weight_decay": 0.0}
    )
    scheduler: Any = None
    scheduler_monitor: str = "val/loss"  # for ReduceLROnPlateau


@dataclass
class ExtrasConfig:
    print_config: bool = True  # print the composed config as a rich tree at start
    ignore_warnings: bool = False  # silence Python warnings (e.g. Lightning's num_workers hint)
    torch_threads: Optional[int] = None  # torch.set_num_threads; None leaves torch's default


@dataclass
class PathsConfig:
    output_dir: str = "${hydra:runtime.output_dir}"  # the run directory: everything a run makes goes here
    work_dir: str = "${hydra:runtime.cwd}"


@dataclass
class TrainConfig:
    task_name: str = "train"  # names the run directory: outputs/<task_name>/runs/<date>_<time>
    tags: List[str] = field(default_factory=lambda: ["dev"])
    seed: int = 0
    train: bool = True
    test: bool = True  # evaluate the best checkpoint on the test split after fit
    ckpt_path: Optional[str] = None  # resume training from this checkpoint
    optimized_metric: str = "val/loss"  # returned by main (Optuna); any key of results.json's metrics
    data: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    extras: ExtrasConfig = field(default_factory=ExtrasConfig)


@dataclass
class EvalConfig:
    task_name: str = "eval"
    tags: List[str] = field(default_factory=lambda: ["eval"])
    seed: int = 0
    ckpt_path: str = MISSING  # the checkpoint to evaluate on the test split
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    extras: ExtrasConfig = field(default_factory=ExtrasConfig)


def register_configs() -> None:
    """Make the schemas available to `defaults:` lists as `train_schema` / `eval_schema`."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
