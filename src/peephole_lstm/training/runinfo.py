"""What a run records about itself: the resolved config, results.json, and provenance."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any, Optional

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

import peephole_lstm

# Printed first in the config tree; the remaining top-level keys follow in config order.
TREE_ORDER = ("data", "model", "trainer", "callbacks", "logger", "paths", "extras")


def resolved(cfg: DictConfig) -> dict:
    """The config as plain Python values (interpolations resolved, Enums as their names)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a rich tree, one branch per group (like lightning-hydra-template)."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in TREE_ORDER if k in cfg] + [k for k in cfg if k not in TREE_ORDER]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def git_commit() -> Optional[str]:
    """HEAD of the git checkout the package is imported from, or None (installed from a wheel, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(peephole_lstm.__file__).parent,
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _number(value: Any) -> Optional[float]:
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None


def write_results(
    run_dir: str | Path,
    *,
    status: str,
    error: Optional[str],
    metrics: dict,
    seed: int,
    wandb: Optional[dict],
    overrides: Optional[list[str]] = None,
) -> Path:
    """results.json as docs/configuration.md ("Run directory") describes it (non-finite metrics are written as null: JSON has no NaN).

    `overrides`: the job's overrides, when written from outside the job (the launcher, for a job that
    ended without a result); by default this process's Hydra job overrides.
    """
    run_dir = Path(run_dir)
    results = {
        "status": status,
        "error": error,
        "metrics": {k: _number(v) for k, v in sorted(metrics.items())},
        "overrides": hydra_overrides() if overrides is None else list(overrides),
        "seed": seed,
        "run_dir": str(run_dir.resolve()),
        "package_version": peephole_lstm.__version__,
        "git_commit": git_commit(),
        "wandb": wandb,
    }
    path = run_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def save_config(cfg: DictConfig, run_dir: str | Path) -> None:
    Path(run_dir, "config.yaml").write_text(OmegaConf.to_yaml(resolved(cfg)))
