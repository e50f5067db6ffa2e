"""Helpers for the framework tests: compose configs in-process, or run train.py / eval.py for real."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from peephole_lstm.training import register_configs

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# Tiny runs: a few batches of a short series, no console clutter.
FAST = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2", "extras.print_config=false", "callbacks.model_summary=null",
        "callbacks.rich_progress_bar=null", "+trainer.enable_progress_bar=false"]


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


def run_script(script: str, *overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <script> overrides...` in `cwd`, W&B offline (tests never touch the network)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(cwd: Path, task_name: str = "train") -> list[Path]:
    return sorted((cwd / "outputs" / task_name / "runs").glob("*"))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # an in-process run's job config must not leak into later tests
