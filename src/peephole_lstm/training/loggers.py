"""Logger construction and the W&B run lifecycle.

W&B runs offline unless the user has credentials, so a fresh machine never blocks on a login prompt
or the network; every job ends its run with `finish_wandb`, so no state leaks into the next multirun job.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger

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
    return WandbLogger(
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
