"""Hydra composition in-process (the config `python train.py overrides...` would get, without starting
a process), and the override lists that make runs tiny."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from peephole_lstm.training import register_configs
from tests.helpers.scripts import ROOT

CONF = ROOT / "conf"

# Tiny runs: a few batches of a short series, no console clutter.
FAST = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2", "extras.print_config=false", "callbacks.model_summary=null",
        "callbacks.rich_progress_bar=null", "+trainer.enable_progress_bar=false"]
# Quiet and deterministic; with TINY_CSV also tiny, with a CSV log (the reliability tests read it back).
QUIET = ["extras.print_config=false", "callbacks.model_summary=null", "callbacks.rich_progress_bar=null",
         "+trainer.enable_progress_bar=false", "callbacks.prediction_plot=null", "trainer.deterministic=true"]
TINY_CSV = [*QUIET, "logger=csv", "data.length=400", "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]
# For multiruns: a short timing task, a 4-unit LSTM, two batches per split: each job takes seconds.
TINY_SWEEP = [
    "data=timing", "data.n_train=32", "data.n_val=16", "data.n_test=16", "data.seq_len=20",
    "data.delay_min=2", "data.delay_max=10", "data.batch_size=16", "model.hidden_size=4",
    "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1", "extras.print_config=false", "callbacks.model_summary=null",
    "callbacks.rich_progress_bar=null", "callbacks.prediction_plot=null", "+trainer.enable_progress_bar=false",
]


def compose_config(name: str = "train", overrides=(), output_dir: Path | None = None) -> DictConfig:
    """The config `python <name>.py overrides...` would get; with output_dir, ready for train()/evaluate()
    in-process (HydraConfig set as Hydra would set it for a run in that directory)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=output_dir is not None)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)  # as Hydra does for a job
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.name = name
            HydraConfig.instance().set_config(cfg)
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.work_dir = str(output_dir)
            del cfg["hydra"]
    return cfg


def compose_sweep_params(experiment: str) -> tuple[dict, DictConfig]:
    """An experiment's sweep grid ({key: [values]}) and its composed config, hydra node included."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}, cfg
