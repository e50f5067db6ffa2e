"""What a run records about itself: the resolved config and the config tree it prints.

results.json and the rest of the run directory's layout: peephole_lstm.rundir."""
from __future__ import annotations

from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

from peephole_lstm import rundir

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


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def save_config(cfg: DictConfig, run_dir: str | Path) -> None:
    rundir.config_path(run_dir).write_text(OmegaConf.to_yaml(resolved(cfg)))
