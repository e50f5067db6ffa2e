"""Shared by the reliability tests: real `python train.py` / `eval.py` runs, and in-process runs that
reuse the framework tests' Hydra composition (tests/training/conftest.py) instead of copying it."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Tiny, quiet, deterministic runs with a CSV log; every run writes into the run dir it is given.
QUIET = ["extras.print_config=false", "callbacks.model_summary=null", "callbacks.rich_progress_bar=null",
         "+trainer.enable_progress_bar=false", "callbacks.prediction_plot=null", "trainer.deterministic=true"]
TINY = [*QUIET, "logger=csv", "data.length=400", "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]


def env() -> dict:
    """W&B offline (tests never touch the network), short Hydra errors, no inherited DDP rank."""
    out = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    out.pop("LOCAL_RANK", None)
    return out


def command(script: str, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *overrides]


def run_script(script: str, *overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(script, *overrides), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def framework_test_helpers():
    """tests/training/conftest.py as a module (compose_config: the config train.py would get)."""
    spec = importlib.util.spec_from_file_location("framework_test_helpers", ROOT / "tests" / "training" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
