"""Resume for submitit-launched jobs: a requeued job continues from its run dir's last checkpoint.

On preemption or timeout, submitit calls the job's `checkpoint` (in the job process, from the signal
handler) and requeues what it returns; hydra-submitit-launcher returns the same call with the same
overrides. The requeued job lands in the same run dir (the sweep dir's `${now:}` is cached in the
pickled config), so all it lacks is where to pick up: `ResumeOnRequeue` adds `ckpt_path=last` once
`<run dir>/checkpoints/last.ckpt` exists, and train.py's resume continues from it in the same W&B run
(peephole_lstm.training.checkpointing). The launcher classes themselves live in
`hydra_plugins.peephole_lstm_launcher` (Hydra accepts launchers only from the hydra_plugins namespace).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peephole_lstm.sweeps.jobs import RESUME_KEYS, split_override


def resume_overrides(overrides: list[str], run_dir: Optional[str]) -> list[str]:
    """`overrides` with `ckpt_path=last` when the interrupted job in `run_dir` left a last checkpoint.

    Until then the job restarts as submitted, keeping a ckpt_path it was given (e.g. to fine-tune).
    """
    if run_dir is None or not (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
        return list(overrides)
    return [o for o in overrides if split_override(o)[0] not in RESUME_KEYS] + ["ckpt_path=last"]


def _current_run_dir() -> Optional[str]:
    """Run dir of the job running in this process (the signal arrives inside its task function)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None


class ResumeOnRequeue:
    """Mixin for hydra-submitit-launcher's launchers: requeue with the resume override."""

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        import submitit

        overrides = resume_overrides(list(sweep_overrides), _current_run_dir())
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)
