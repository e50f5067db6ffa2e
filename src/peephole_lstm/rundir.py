"""The run directory: the one definition of what a train.py/eval.py job leaves behind, and where.

docs/configuration.md ("Run directory") describes the layout for users. Every module that writes or reads
a run directory takes the names from here:

- written by training (peephole_lstm.training: `config.yaml`, `results.json`; its callbacks write
  `checkpoints/` and `history.csv`, configured in conf/callbacks/*.yaml with these same names, which
  tests/training/test_rundir.py checks) and by the submitit launchers (`results.json` for a job that
  ended without writing one);
- read by the sweep reports (peephole_lstm.sweeps.jobs), the launchers' and `ckpt_path=last`'s resume
  (`checkpoints/last.ckpt`), the Optuna resume (`results.json`) and the ONNX export (`checkpoints/`).

Standard library only (besides the package's version), so that `peephole_lstm.sweeps` reads run
directories without importing the training code or Lightning.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any, Optional

from peephole_lstm.atomic import atomic_write

HYDRA_DIR = ".hydra"  # Hydra's own record of a job: what marks a directory as a job of a multirun
OVERRIDES_FILE = "overrides.yaml"  # in HYDRA_DIR: the job's command-line overrides
CONFIG_FILE = "config.yaml"  # the fully resolved config, written when the job starts
RESULTS_FILE = "results.json"  # status, error, final metrics, provenance; written when the job ends
HISTORY_FILE = "history.csv"  # every epoch's train/* and val/* metrics (training.callbacks.MetricHistory)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # in CHECKPOINT_DIR, written every epoch: what `ckpt_path=last` resumes from
BEST_CHECKPOINT_GLOB = "best-*.ckpt"  # in CHECKPOINT_DIR: the lowest val/loss (conf/callbacks/model_checkpoint.yaml)
PLOTS_DIR = "plots"

COMPLETED = "completed"  # results.json's "status"
FAILED = "failed"


def hydra_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / HYDRA_DIR


def overrides_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / HYDRA_DIR / OVERRIDES_FILE


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def history_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / HISTORY_FILE


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def plots_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PLOTS_DIR


def is_job_dir(path: str | Path) -> bool:
    """Whether `path` is a job of a Hydra multirun (it holds Hydra's `.hydra/` record)."""
    return hydra_dir(path).is_dir()


def read_results(run_dir: str | Path) -> Optional[dict]:
    """results.json as a dict; None when the run has none (killed, still running, never started).

    A file that is not JSON, or not a JSON object, raises ValueError.
    """
    path = results_path(run_dir)
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if not isinstance(results, dict):
        raise ValueError("top level is not a JSON object")
    return results


def git_commit() -> Optional[str]:
    """HEAD of the git checkout the package is imported from, or None (installed from a wheel, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _number(value: Any) -> Optional[float]:
    value = float(value.item() if hasattr(value, "item") else value)  # a 0-d tensor too
    return value if math.isfinite(value) else None


def write_results(
    run_dir: str | Path,
    *,
    status: str,
    error: Optional[str],
    metrics: dict,
    seed: Any,
    wandb: Optional[dict],
    overrides: list[str],
) -> Path:
    """Write results.json (non-finite metrics as null: JSON has no NaN) atomically: a reader never sees
    half a file. `overrides`: the job's command-line overrides."""
    from peephole_lstm import __version__

    run_dir = Path(run_dir)
    results = {
        "status": status,
        "error": error,
        "metrics": {k: _number(v) for k, v in sorted(metrics.items())},
        "overrides": list(overrides),
        "seed": seed,
        "run_dir": str(run_dir.resolve()),
        "package_version": __version__,
        "git_commit": git_commit(),
        "wandb": wandb,
    }
    path = results_path(run_dir)
    atomic_write(path, lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    return path
