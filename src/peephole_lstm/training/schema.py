"""Structured config schemas: Hydra validates every override against these before anything runs.

Choices are Enums built from the library's own option lists, so `model.peephole=diagnol` fails at
composition with "Invalid value 'diagnol', expected one of [none, diagonal, full]" and the key name;
typed fields reject `model.hidden_size=big`; struct mode rejects unknown keys. The groups whose keys
are constructor arguments of a `_target_` (data, trainer, logger, callbacks, optimizer, scheduler) are
checked against those signatures by `peephole_lstm.training.checks` before the data is loaded.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from peephole_lstm.nn.options import BACKENDS, CHOICES, CellOptions, variants


def _choices(name: str, values) -> type[Enum]:
    # str mix-in: members compare equal to their names, and OmegaConf prints the allowed values.
    return Enum(name, {v: v for v in values}, type=str)


Arch = _choices("Arch", ("peephole", "lstm", "gru"))
Backend = _choices("Backend", BACKENDS)
Variant = _choices("Variant", variants)
# The cell options with a fixed set of values, by name: Peephole, OutputPeephole, InputActivation, ...
_ENUMS = {name: _choices(name.title().replace("_", ""), values) for name, values in CHOICES.items()}

# Where each `model` / `extras` value is defined, once: a key that conf/model/peephole_lstm.yaml (or
# conf/extras/default.yaml) sets has no default here (MISSING), the YAML is what runs use; the cell options
# take theirs from CellOptions; the others (embedding_dim, ...) have theirs below.
# tests/training/test_single_source.py checks that no value is written twice.


@dataclass
class _NetworkKeys:
    arch: Arch = MISSING  # peephole: peephole_lstm.PeepholeLSTM; lstm / gru: torch.nn baselines
    variant: Optional[Variant] = MISSING  # a Greff et al. preset; its options override the cell options
    hidden_size: int = MISSING
    num_layers: int = MISSING
    dropout: float = MISSING  # between recurrent layers, as in nn.LSTM
    bidirectional: bool = MISSING


def _cell_keys() -> list[tuple[str, Any, Any]]:
    """bias, proj_size and PeepholeLSTM's options as (name, type, field): CellOptions' fields with its
    defaults, an option with fixed values typed by its Enum, so that a wrong value fails at composition
    naming the allowed ones. (input_size is the data's; hidden_size is a network key above.)"""
    hints = typing.get_type_hints(CellOptions)
    keys = []
    for f in dataclasses.fields(CellOptions):
        if f.name in ("input_size", "hidden_size"):
            continue
        enum = _ENUMS.get(f.name)
        if enum is not None:
            keys.append((f.name, enum, field(default=enum[f.default])))
        else:
            keys.append((f.name, hints[f.name], field(default=f.default)))
    return keys


# (The cell options apply to arch=peephole only; the nn.LSTM / nn.GRU baselines have bias and, LSTM, proj_size.)
_CellKeys = dataclasses.make_dataclass("_CellKeys", _cell_keys(), bases=(_NetworkKeys,))


@dataclass
class ModelConfig(_CellKeys):
    """The recurrent network, its task head and its optimisation (see docs/configuration.md): the network's
    keys (arch ... bidirectional), the cell options (CellOptions' fields from bias to zoneout), then these."""

    backend: Backend = MISSING
    compile: bool = MISSING  # torch.compile the whole network (docs/export.md says when it pays off)
    # task heads
    embedding_dim: int = 32  # lm: character embedding size
    head_dropout: float = 0.0  # dropout on the recurrent features before the output layer
    # optimisation: `optimizer` / `scheduler` are partials instantiated with the parameters / optimizer
    lr: float = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING  # null: a constant learning rate
    scheduler_monitor: str = "val/loss"  # for ReduceLROnPlateau


@dataclass
class ExtrasConfig:  # the values: conf/extras/default.yaml
    print_config: bool = MISSING  # print the composed config as a rich tree at start
    ignore_warnings: bool = MISSING  # silence Python warnings (e.g. Lightning's num_workers hint)
    torch_threads: Optional[int] = MISSING  # torch.set_num_threads; None leaves torch's default


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
