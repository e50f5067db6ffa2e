"""Submitit launchers whose requeued jobs resume from their run dir's last checkpoint.

On preemption or timeout, submitit calls the job's `checkpoint` (in the job process, from the signal
handler) and requeues what it returns; hydra-submitit-launcher returns the same call with the same
overrides. The requeued job lands in the same run dir (the sweep dir's `${now:}` is cached in the
pickled config), so all it lacks is where to pick up: these launchers add
`ckpt_path=<run dir>/checkpoints/last.ckpt` when that file exists, and the W&B run id so that the job
stays one W&B run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from peephole_lstm.sweeps.jobs import split_override

RESUME_KEYS = ("ckpt_path", "logger.wandb.id")


def resume_overrides(overrides: list[str], run_dir: Optional[str], wandb_id: Optional[str]) -> list[str]:
    """`overrides` with ckpt_path (and the W&B run id) pointing at what the interrupted job left."""
    kept = [o for o in overrides if split_override(o)[0] not in RESUME_KEYS]
    if run_dir is None:
        return kept
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        kept.append(f"ckpt_path='{_escape(str(last.resolve()))}'")
    if wandb_id:
        kept.append(f"++logger.wandb.id={wandb_id}")
    return kept


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _current_job() -> tuple[Optional[str], Optional[str]]:
    """Run dir and W&B run id of the job running in this process (we are inside its task function)."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    try:
        import wandb

        wandb_id = wandb.run.id if wandb.run is not None else None
    except ImportError:
        wandb_id = None
    return run_dir, wandb_id


class _Resuming:
    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        import submitit

        overrides = resume_overrides(list(sweep_overrides), *_current_job())
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)


class ResumingLocalLauncher(_Resuming, LocalLauncher):
    pass


class ResumingSlurmLauncher(_Resuming, SlurmLauncher):
    pass
