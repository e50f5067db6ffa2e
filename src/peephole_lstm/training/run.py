"""What `train.py` and `eval.py` do with a composed config.

Order matters for the user: every config and data error is raised before the Trainer starts, and a job
always leaves results.json (status "completed" or "failed") and ends its W&B run, even when it raises.
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from peephole_lstm import rundir
from peephole_lstm.training import ddp
from peephole_lstm.training.checkpointing import AtomicCheckpointIO, Resume, load_file, prepare_resume
from peephole_lstm.training.checks import check_schema_keys, check_targets
from peephole_lstm.training.errors import ConfigError, check_missing, instantiate
from peephole_lstm.training.loggers import (
    TensorBoardLogger, close_loggers, finish_wandb, run_hparams, swept_overrides, wandb_info,
)
from peephole_lstm.training.module import SequenceModel, network_arguments
from peephole_lstm.training.schema import EvalConfig, TrainConfig
from peephole_lstm.training.runinfo import hydra_overrides, print_config_tree, resolved, save_config

# `import lightning` gives its logger a console handler of its own; Hydra's root handlers already print
# (and write train.log), so under Hydra every Lightning message would be shown twice.
if logging.getLogger().hasHandlers():
    logging.getLogger("lightning").handlers.clear()


class _DropAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing ..." adverts and its note that our model summary replaces its
    default one: printed on every run, nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") or message.startswith("Trainer already configured with model summary"))


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
# Warnings a user cannot act on, printed (some twice) on every run: Lightning's own use of a torch API that
# torch deprecated, and its hint to use srun wherever a SLURM client is installed (SLURM jobs go through
# hydra/launcher=slurm, which starts the ranks with srun itself).
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


@dataclass
class _Job:
    """What a job has built so far; read by the failure path to record as much as exists."""

    loggers: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    wandb: Optional[dict] = None


def _run_job(cfg: DictConfig, prepare: Callable[[DictConfig], Any], body: Callable[[DictConfig, _Job, Any], None]) -> dict:
    """Run one job: `prepare` validates the config and loads the data, then the config tree is printed and
    `body` runs with what `prepare` returned; results.json and the W&B run's end in every case.

    Validation comes first so that a mistake is the first thing the user sees, not the last line after
    a 130-line config tree.
    """
    run_dir = cfg.paths.output_dir
    child = ddp.is_extra_rank()  # ranks > 0 write no results and print nothing
    if cfg.extras.ignore_warnings:
        warnings.filterwarnings("ignore")
    if cfg.extras.torch_threads:
        torch.set_num_threads(cfg.extras.torch_threads)
    if not child:
        save_config(cfg, run_dir)
    job = _Job()
    try:
        with ddp.ddp_job(run_dir, hydra_overrides()):
            prepared = prepare(cfg)
            if not child and cfg.extras.print_config:
                print_config_tree(cfg)
            body(cfg, job, prepared)
    except BaseException as e:
        if not child:
            rundir.write_results(run_dir, status=rundir.FAILED, error=f"{type(e).__name__}: {e}",
                                 metrics=job.metrics, seed=cfg.seed, wandb=job.wandb, overrides=hydra_overrides())
        finish_wandb(failed=True)
        raise
    finally:
        close_loggers(job.loggers)
    if not child:
        rundir.write_results(run_dir, status=rundir.COMPLETED, error=None, metrics=job.metrics, seed=cfg.seed,
                             wandb=job.wandb, overrides=hydra_overrides())
    finish_wandb(failed=False)
    return job.metrics


def _instantiate_all(node: Optional[DictConfig], key: str) -> list:
    """Instantiate every `_target_` entry of a group such as `callbacks` or `logger` (None/empty: none)."""
    if not node:
        return []
    return [instantiate(v, f"{key}.{name}") for name, v in node.items() if v and "_target_" in v]


def _trainer(cfg: DictConfig, job: _Job) -> pl.Trainer:
    callbacks = _instantiate_all(cfg.callbacks, "callbacks")
    job.loggers = _instantiate_all(cfg.logger, "logger")
    trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=job.loggers or False,
                          plugins=[AtomicCheckpointIO()])  # kill-safe saves, weights_only loads
    if trainer.is_global_zero:
        job.wandb = wandb_info(job.loggers)
    for logger in job.loggers:
        logger.log_hyperparams(resolved(cfg))
    return trainer


def _check_config(cfg: DictConfig, groups: tuple[str, ...]) -> None:
    for key in groups:
        if cfg.get(key) is not None:
            check_targets(cfg[key], key)


def _metrics(trainer: pl.Trainer, prefixes: tuple[str, ...]) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefixes)}


@dataclass
class _Prepared:
    """What validation built: the data (loaded and checked) and the model it fits."""

    datamodule: Any
    model: Any


def _prepare_fit(cfg: DictConfig) -> _Prepared:
    """Every check that can fail on the user's config or data, before anything is printed or trained."""
    check_missing(cfg, _choices())
    check_schema_keys(cfg, TrainConfig)
    _check_config(cfg, ("data", "trainer", "callbacks", "logger"))
    model_cfg = resolved(cfg.model)
    check_targets(cfg.model.optimizer, "model.optimizer")
    if cfg.model.scheduler:
        check_targets(cfg.model.scheduler, "model.scheduler")
    # Model options fail here, before any data is loaded; the input size is the data's, any valid one will do.
    network_arguments(model_cfg, input_size=1)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the config tree shows the seed

    datamodule = instantiate(cfg.data, "data")
    spec = asdict(datamodule.spec)  # loads and validates all data
    model = SequenceModel(spec=spec, model=model_cfg)
    model.run_config = resolved(cfg)
    return _Prepared(datamodule, model)


def _fit(cfg: DictConfig, job: _Job, prepared: _Prepared, resume: Optional[Resume] = None) -> None:
    datamodule, model = prepared.datamodule, prepared.model
    trainer = _trainer(cfg, job)
    if resume:
        resume.restore_logs(trainer.loggers)

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        job.metrics.update(_metrics(trainer, ("train/", "val/")))
    if cfg.test:
        # Report val and test metrics of the same weights: the best checkpoint by val/loss when there is one.
        monitored = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
        best = monitored[0].best_model_path if monitored else ""
        ckpt = best or (cfg.ckpt_path if not cfg.train else None)
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt)
        job.metrics.update(_metrics(trainer, ("val/",)))
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
        job.metrics.update(_metrics(trainer, ("test/",)))
    _log_summary(cfg, job, trainer)


def _log_summary(cfg: DictConfig, job: _Job, trainer: pl.Trainer) -> None:
    """The run's arms and final metrics, for dashboards that compare runs (TensorBoard's HParams tab)."""
    for logger in job.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_summary(run_hparams(cfg, swept_overrides(), _choices()), job.metrics, step=trainer.global_step)


def _choices() -> dict:
    """The config group options of this run (data=csv, ...), for messages; empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _remove_unused_run_dir(run_dir: str) -> None:
    """Remove the run dir Hydra made for this start when nothing else was written into it.

    Hydra creates the run dir (its .hydra/ and the job's log) before the task runs, so a refused resume,
    e.g. `ckpt_path=last` with a mistyped `hydra.run.dir`, would leave an empty run behind. Only a dir of
    a single run holding nothing but those files, all written by this process, is removed.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    path = Path(run_dir)
    log_name = f"{HydraConfig.get().job.name}.log"
    if not path.is_dir() or not {p.name for p in path.iterdir()} <= {rundir.HYDRA_DIR, log_name}:
        return
    try:
        started = os.stat("/proc/self").st_ctime  # this process's start (Linux); elsewhere keep the dir
    except OSError:
        return
    if any(p.stat().st_mtime < started for p in path.rglob("*")):
        return
    for handler in list(logging.getLogger().handlers):  # Hydra's file handler writes the job's log there
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == path.resolve():
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(path, ignore_errors=True)


def train(cfg: DictConfig) -> Optional[float]:
    """Fit (and test) as configured; returns the value of `optimized_metric` (for Optuna sweeps)."""
    # ckpt_path is resolved (`last`) and checked (file, config) before the job writes into the run dir, so a
    # refused resume leaves that run's config.yaml and results.json as they were.
    try:
        resume = prepare_resume(cfg, resolved(cfg))
    except ConfigError:
        _remove_unused_run_dir(cfg.paths.output_dir)
        raise
    metrics = _run_job(cfg, _prepare_fit, lambda cfg, job, prepared: _fit(cfg, job, prepared, resume))
    if cfg.optimized_metric not in metrics:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric!r} was not produced; available: {', '.join(sorted(metrics))}"
        )
    return metrics[cfg.optimized_metric]


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by train.py, loaded without executing code from the file (weights_only)."""
    path = Path(path)
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or "run_config" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a checkpoint written by train.py (no run_config)")
    return checkpoint


def _prepare_evaluate(cfg: DictConfig) -> _Prepared:
    check_schema_keys(cfg, EvalConfig)
    _check_config(cfg, ("trainer", "callbacks", "logger"))
    checkpoint = load_checkpoint(cfg.ckpt_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(checkpoint["run_config"]["data"], "data (from the checkpoint)")
    spec = asdict(datamodule.spec)
    model = SequenceModel(**checkpoint["hyper_parameters"])
    for key in ("task", "input_size", "output_size", "horizon"):
        if spec.get(key) != model.spec.get(key):
            raise ConfigError(f"the data no longer matches the checkpoint: {key} is {spec.get(key)!r}, "
                              f"the model was trained with {model.spec.get(key)!r}")
    model.load_state_dict(checkpoint["state_dict"])
    model.run_config = checkpoint["run_config"]
    return _Prepared(datamodule, model)


def _evaluate(cfg: DictConfig, job: _Job, prepared: _Prepared) -> None:
    trainer = _trainer(cfg, job)
    trainer.test(prepared.model, datamodule=prepared.datamodule)
    job.metrics.update(_metrics(trainer, ("test/",)))
    _log_summary(cfg, job, trainer)


def evaluate(cfg: DictConfig) -> dict:
    """Test the checkpoint `cfg.ckpt_path` on its data's test split; returns the test metrics."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: python eval.py ckpt_path=<run dir>/checkpoints/last.ckpt")
    return _run_job(cfg, _prepare_evaluate, _evaluate)
