"""Checkpoints that survive a kill and cannot run code: atomic writes, safe loading, resuming a run.

Atomic: Lightning's default writer streams into the final file (or, through fsspec, into a temp file in
the system temp dir that is then *copied* across file systems), so a SIGKILL or a full disk mid-save can
leave a truncated `last.ckpt` that the next `ckpt_path=last` picks up. AtomicCheckpointIO writes a temp
file next to the target, fsyncs it and renames it over the target: readers see the old or the new file.

Safe: a checkpoint is a pickle, and unpickling can call any function. Every load here goes through
`torch.load(weights_only=True)` (tensors, containers and numbers only), with Lightning's hparams container
as the one extra allowed type, and names the file and the problem when a file is truncated, foreign or
refers to code.

Resume: `ckpt_path=last` means `<run dir>/checkpoints/last.ckpt`; resuming in the run's own directory also
continues its W&B run and keeps the metrics CSV rows of the epochs the checkpoint contains.
"""
from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from peephole_lstm import rundir
from peephole_lstm.atomic import atomic_write
from peephole_lstm.training.errors import ConfigError

LAST = "last"  # ckpt_path=last: <run dir>/checkpoints/last.ckpt
# Data-only types that Lightning may pickle into a checkpoint besides tensors and builtins.
SAFE_GLOBALS = [AttributeDict]
# What Trainer.fit needs to resume; a bare state_dict or another program's checkpoint lacks these.
TRAINING_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")
# Config that must match the checkpoint's for a resume to continue the same experiment.
SAME_RUN_KEYS = ("seed", "data", "model")
RNG_STATES = "rng_states"  # checkpoint key: random generators' states when it was saved (callbacks.LastCheckpoint)
EPOCH_LOG = "epoch_log"  # checkpoint key: the training metrics of the epoch the checkpoint ends


class CheckpointError(ConfigError):
    """A checkpoint file that cannot (or must not) be used; the message names the file and why."""


# ---------------------------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Trainer plugin: every checkpoint write is all-or-nothing, every read is `weights_only`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        # weights_only is forced: resuming must never execute code from the file, whatever the caller asks.
        return load_file(path, map_location=map_location)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through atomic_write: a temp file beside the target, fsynced, renamed over it."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_states() -> dict:
    """Every global random generator's state, as types that `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss), "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])


# ---------------------------------------------------------------------------------------------- reading
def load_file(path, map_location: Any = "cpu", key: str = "ckpt_path") -> Any:
    """`torch.load(path, weights_only=True)` with an error naming the file for each way it can be bad."""
    path = Path(path)
    name = f"{key}={str(path)!r}"
    if not path.exists():
        raise CheckpointError(f"{name} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{name} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as e:  # torch raises OSError, EOFError, IndexError, RuntimeError... for bad bytes
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:
            raise CheckpointError(
                f"{name} was not loaded: it refers to {blocked.group(1)}, which is code, not data, and "
                f"unpickling it could run that code; a checkpoint may hold only tensors, numbers, strings and containers"
            ) from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{name} ({size} bytes) is truncated, corrupt or not a PyTorch checkpoint ({type(e).__name__}: {first})"
        ) from None


def _require_keys(checkpoint: Any, path: Path, keys: tuple[str, ...], purpose: str) -> None:
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"ckpt_path={str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint "
                              f"written by train.py; {purpose}")
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        found = ", ".join(map(str, list(checkpoint)[:8])) + (", ..." if len(checkpoint) > 8 else "")
        raise CheckpointError(
            f"ckpt_path={str(path)!r} is not a checkpoint written by train.py (missing {', '.join(missing)}; "
            f"it has: {found or 'nothing'}); {purpose}"
        )


def load_training_checkpoint(path) -> dict:
    """A checkpoint train.py can resume from (weights, optimizer and loop state, and the run's config)."""
    checkpoint = load_file(path)
    _require_keys(checkpoint, Path(path), (*TRAINING_KEYS, "run_config"),
                  "resuming needs the full training state that train.py saves in checkpoints/")
    return checkpoint


# ---------------------------------------------------------------------------------------------- resuming
def resolve_ckpt_path(ckpt_path: Optional[str], run_dir: str | Path) -> Optional[Path]:
    """`last` -> <run_dir>/checkpoints/last.ckpt (which must exist); any other value is a path."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) != LAST:
        return Path(ckpt_path)
    path = rundir.last_checkpoint(run_dir)
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path=last: there is no {str(path)!r}. To resume a run, start train.py in that run's directory "
            f"with its original overrides: python train.py <overrides> ckpt_path=last hydra.run.dir=<run dir>"
        )
    return path


def _differences(old: Any, new: Any, key: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{key}.{k}")
        return out
    return [] if old == new else [f"{key}: {old!r} in the checkpoint, {new!r} now"]


def check_same_run(run_config: dict, current: dict, path: Path, cfg: Optional[DictConfig] = None) -> None:
    """Fail when the resumed config would build another model/data/seed than the checkpoint's run.

    Keys derived from the trainer's (model.scheduler.T_max: ${trainer.max_epochs}) are compared as they
    resolve with the checkpoint's trainer settings, so training longer is not a different run.
    """
    if cfg is not None and isinstance(run_config.get("trainer"), dict):
        probe = cfg.copy()
        with open_dict(probe):
            probe.trainer = run_config["trainer"]
        current = {**current, **{k: v for k, v in OmegaConf.to_container(probe, resolve=True, enum_to_str=True).items()
                                 if k in SAME_RUN_KEYS}}
    diffs = [d for key in SAME_RUN_KEYS for d in _differences(run_config.get(key), current.get(key), key)]
    if diffs:
        raise CheckpointError(
            f"ckpt_path={str(path)!r} was trained with another config; resume with the run's original overrides. "
            f"Differences: " + "; ".join(diffs[:10]) + (f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else "")
        )


def wandb_run_id(run_dir: str | Path) -> Optional[str]:
    """The id of the newest W&B run (offline or online) recorded under <run_dir>/wandb/, if any."""
    files = sorted(Path(run_dir, "wandb").glob("*run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    return files[-1].name[len("run-"):-len(".wandb")] if files else None


def _csv_log_dir(node: Any) -> Optional[Path]:
    """Where a `CSVLogger` config node writes, when it names a fixed version (else each run has its own)."""
    if node.get("version") is None:
        return None
    version = node.version if isinstance(node.version, str) else f"version_{node.version}"
    return Path(node.save_dir, node.get("name") or "", version)


def _number(text: str) -> float | int:
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


@dataclass
class Resume:
    """A resume of `checkpoint`; `restore_logs` runs once the loggers exist (they truncate their files)."""

    path: Path
    epoch: int
    epoch_log: Optional[dict] = None
    csv_rows: dict[Path, list[dict]] = field(default_factory=dict)

    def restore_logs(self, loggers) -> None:
        """Re-log the metrics CSV rows up to the checkpoint's epoch, which CSVLogger deletes when it starts,
        plus that epoch's training row when the kill came before Lightning logged it."""
        for logger in loggers:
            rows = self.csv_rows.get(Path(logger.log_dir).resolve()) if isinstance(logger, CSVLogger) else None
            if rows is None:
                continue
            rows = [{k: _number(v) for k, v in row.items() if v != ""} for row in rows]
            log = self.epoch_log
            if log and not any(row["epoch"] == log["epoch"] and log["metrics"].keys() & row.keys() for row in rows):
                rows.append({**log["metrics"], "epoch": log["epoch"], "step": log["step"]})
            for row in rows:
                logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
            logger.save()


def _kept_csv_rows(cfg: DictConfig, epoch: int) -> dict[Path, list[dict]]:
    kept = {}
    for node in (cfg.get("logger") or {}).values():
        if not node or not str(node.get("_target_", "")).endswith("CSVLogger"):
            continue
        log_dir = _csv_log_dir(node)
        metrics = log_dir / "metrics.csv" if log_dir else None
        if metrics is None or not metrics.is_file():
            continue
        with metrics.open(newline="") as f:
            # Rows of later epochs were logged after the checkpoint: the resumed run logs them again.
            kept[log_dir.resolve()] = [r for r in csv.DictReader(f) if r.get("epoch") and int(float(r["epoch"])) <= epoch]
    return kept


def prepare_resume(cfg: DictConfig, current_config: dict) -> Optional[Resume]:
    """Validate `cfg.ckpt_path` before anything is built, and set up a resume of it.

    Sets cfg.ckpt_path to the resolved file. When the checkpoint lies in this run's own directory (the
    `hydra.run.dir=<run dir>` resume), also points the W&B logger at the run's existing W&B run and keeps
    the metrics CSV rows of the epochs the checkpoint covers.
    """
    run_dir = Path(cfg.paths.output_dir)
    path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if path is None:
        return None
    checkpoint = load_training_checkpoint(path)
    check_same_run(checkpoint["run_config"], current_config, path, cfg)
    with open_dict(cfg):
        cfg.ckpt_path = str(path.resolve())
    resume = Resume(path=path, epoch=int(checkpoint["epoch"]), epoch_log=checkpoint.get(EPOCH_LOG))
    if path.resolve().parent != rundir.checkpoint_dir(run_dir).resolve():
        return resume  # a checkpoint from elsewhere starts a new run (fine-tuning, a copied checkpoint)
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb and wandb.get("id") is None:
        run_id = wandb_run_id(run_dir)
        if run_id:
            with open_dict(cfg):
                cfg.logger.wandb.id = run_id
    resume.csv_rows = _kept_csv_rows(cfg, resume.epoch)
    return resume
