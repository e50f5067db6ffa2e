"""Logger construction, the W&B run lifecycle, TensorBoard as an offline dashboard, and a CSV logger
that a killed run cannot empty.

W&B runs offline unless the user has credentials, so a fresh machine never blocks on a login prompt
or the network; every job ends its run with `finish_wandb`, so no state leaks into the next multirun job.
"""
from __future__ import annotations

import csv
import math
import netrc
import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

WANDB_MODES = ("online", "offline", "disabled")


def wandb_has_credentials() -> bool:
    """True when an API key is available (WANDB_API_KEY or a netrc entry for the W&B host); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: Optional[str]) -> str:
    """Explicit config mode, else WANDB_MODE, else online with credentials and offline without."""
    if mode is None:
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    if mode == "dryrun":  # W&B's legacy spelling of offline
        mode = "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is not valid; allowed values: null (auto), {', '.join(WANDB_MODES)}")
    return mode


def sweep_group() -> Optional[str]:
    """The W&B group of a Hydra multirun job: its sweep directory as <date>_<time>; None for single runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


def job_name() -> Optional[str]:
    """A readable W&B run name: the job's overrides (e.g. 'model.peephole=full,seed=1'), if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def wandb_logger(
    project: str,
    save_dir: str,
    entity: Optional[str] = None,
    mode: Optional[str] = None,
    group: Optional[str] = None,
    job_type: Optional[str] = None,
    tags: Sequence[str] = (),
    name: Optional[str] = None,
    log_model: bool = False,
    id: Optional[str] = None,  # noqa: A002 (W&B's name) continue this run: a requeued job stays one run
) -> WandbLogger:
    """A WandbLogger writing under `save_dir`/wandb/; the run itself starts on first use (rank 0 only)."""
    logger = WandbLogger(
        id=id,
        resume="allow" if id else None,
        project=project,
        entity=entity,
        save_dir=save_dir,
        mode=resolve_wandb_mode(mode),
        group=group or sweep_group(),
        job_type=job_type,
        tags=list(tags),
        name=name or job_name(),
        log_model=log_model,
    )
    # Lightning always passes wandb.init(anonymous=None), and W&B warns on every run that the setting has
    # no effect; leaving the key out is what W&B asks for.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def wandb_info(loggers: Sequence[Logger]) -> Optional[dict]:
    """{"id", "group", "dir"} of the job's W&B run (dir: its offline/online run directory), or None."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if not hasattr(run, "id"):  # disabled mode or a non-zero rank
                return None
            return {"id": run.id, "group": run.group or None, "dir": str(Path(run.dir).parent)}
    return None


def finish_wandb(failed: bool) -> None:
    """End the job's W&B run, marked failed (exit code 1) when the job raised."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


# Keys every run shows in TensorBoard's HParams table (the usual arms of a sweep), besides the keys its
# sweep varies. Few on purpose: the table shows only its first few columns until the user ticks more.
HPARAM_KEYS = ("seed", "model.peephole", "model.variant")


def swept_overrides() -> list[str]:
    """The job's overrides that are arms: in a multirun the keys the sweep varies (comma lists and
    ranges on the command line, `hydra.sweeper.params` of an experiment or search config); in a single
    run every override."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return overrides
    swept = {str(k) for k in (hydra_cfg.sweeper.get("params") or {})}
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        swept |= {o.key_or_group for o in OverridesParser.create().parse_overrides(args) if o.is_sweep_override()}
    except Exception:  # noqa: BLE001 - an argv Hydra did not parse (a launcher's own): keep the sweeper's keys
        pass
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] in swept]


def run_hparams(cfg: Any, overrides: Sequence[str] = (), choices: Optional[dict] = None) -> dict:
    """The run's arms for a dashboard's hyper-parameter table: HPARAM_KEYS, the data (its config group's
    option, e.g. mackey_glass, else the datamodule's class), and every key
    the job's overrides set (a sweep's grid), as scalars (lists and None become text; a group choice such
    as data=timing stays the option's name)."""
    from omegaconf import DictConfig, OmegaConf

    given = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith("hydra."):
            given[key] = value
    data = (choices or {}).get("data") or OmegaConf.select(cfg, "data._target_", default=None)
    out: dict[str, Any] = {"data": str(data).rsplit(".", 1)[-1]} if data else {}
    for key in dict.fromkeys([*HPARAM_KEYS, *given]):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig) or (value is None and given.get(key)):
            value = given[key]  # a group choice (data=timing), or a key the override removed
        elif isinstance(value, Enum):
            value = value.name
        elif OmegaConf.is_config(value):
            value = str(OmegaConf.to_container(value))
        if not isinstance(value, (bool, int, float, str)):
            value = "null" if value is None else str(value)
        out[key] = value
    return out


class TensorBoardLogger(pl_loggers.TensorBoardLogger):
    """Lightning's TensorBoardLogger as an offline dashboard for runs and sweeps.

    - One event file for the whole run. Lightning finalizes the logger after fit, validate and test;
      the stock logger closes its writer each time, so the next stage opens a new event file, and writers
      that name their files to the second (tensorboardX) overwrote the earlier stages' scalars. Here
      `finalize` only flushes; `close` ends the writer when the job ends.
    - `log_summary` writes the HParams plugin's records: the run's arms (`run_hparams`) and its final
      metrics (as in results.json, logged as `final/<metric>` scalars), so the HParams tab compares a
      sweep's runs side by side.
    - `log_image` adds a PNG file (the forecast plots) to the Images tab.
    """

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()
        if status == "success":
            self.save()

    def close(self) -> None:
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None

    @rank_zero_only
    def log_summary(self, hparams: dict, metrics: dict, step: int = 0) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        final = {f"final/{k}": float(v) for k, v in sorted(metrics.items()) if math.isfinite(float(v))}
        for key, value in final.items():
            self.experiment.add_scalar(key, value, step)
        experiment, start, end = hparams_summary(hparams, final)
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        writer.flush()

    @rank_zero_only
    def log_image(self, key: str, path: str | Path, step: int = 0) -> None:
        import matplotlib.pyplot as plt
        import numpy as np

        pixels = plt.imread(str(path))  # PNG: float RGB(A) in [0, 1]
        rgb = (np.clip(pixels[..., :3], 0.0, 1.0) * 255).round().astype(np.uint8)
        self.experiment.add_image(key, rgb, step, dataformats="HWC")
        self.experiment.flush()


class _AtomicCSVWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, except that a rewrite goes through a temporary file and a rename.
    When a row brings new columns (every run's first training row, right after epoch 0's validation row
    and just after last.ckpt is saved) Lightning rewrites the whole file in place: truncate, then write.
    A run killed in between (SIGKILL, a preempted job) lost every row it had logged, which a resume
    from last.ckpt cannot log again."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        partial = self.metrics_file_path + ".tmp"
        with self._fs.open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(partial, self.metrics_file_path)  # a rename on a local disk: the old file or the new one


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSVLogger (conf/logger/csv.yaml) with `_AtomicCSVWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicCSVWriter(log_dir=self.log_dir)
        return self._experiment


def close_loggers(loggers: Sequence[Logger]) -> None:
    """End the writers that outlive Lightning's finalize (the TensorBoard event file)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.close()
