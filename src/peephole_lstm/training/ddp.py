"""DDP under Hydra: the extra ranks join rank 0's job instead of starting jobs of their own.

Lightning's DDP launcher re-executes the command line once per extra rank (LOCAL_RANK=1, 2, ...). The
command line can be a whole multirun (`-m model.peephole=none,full`), so rank 0 exports its job's run
directory and overrides in PEEPHOLE_LSTM_DDP_JOB (the children inherit its environment) and each child
rewrites its argv to exactly that one job in that directory, before Hydra parses it. Rank 0 restores
the DDP environment variables after each job, so the next job of a multirun launches its ranks anew.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator

JOB_ENV = "PEEPHOLE_LSTM_DDP_JOB"
# Set by Lightning's launcher in rank 0's own environment; while LOCAL_RANK is set, Lightning assumes the
# processes were created externally and would not launch the next job's ranks.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", JOB_ENV)


def is_child_rank() -> bool:
    """True in a process that Lightning launched for an extra rank of a job."""
    return JOB_ENV in os.environ and os.environ.get("LOCAL_RANK", "0") != "0"


def is_extra_rank() -> bool:
    """True in any rank > 0 of a job: one Lightning launched, or an extra SLURM task (with
    hydra/launcher=slurm, tasks_per_node = trainer.devices: SLURM starts every rank of the job itself)."""
    return is_child_rank() or os.environ.get("SLURM_PROCID", "0") not in ("", "0")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rewrite_child_argv() -> None:
    """In an extra rank, replace argv by rank 0's job: its overrides, its run dir, no .hydra/ copy."""
    if not is_child_rank():
        return
    job = json.loads(os.environ[JOB_ENV])
    config_name = ["--config-name", job["config_name"]] if job.get("config_name") else []
    sys.argv = [sys.argv[0], *config_name, *job["overrides"],
                f"hydra.run.dir={_quote(job['run_dir'])}",
                "hydra.output_subdir=null",
                f"hydra.job.name=ddp_rank{os.environ['LOCAL_RANK']}"]


@contextlib.contextmanager
def ddp_job(run_dir: str, overrides: list[str]) -> Iterator[None]:
    """Around one job in rank 0: publish it to the ranks Lightning launches, and clean up afterwards."""
    if is_child_rank():
        yield
        return
    from hydra.core.hydra_config import HydraConfig

    saved = {k: os.environ.get(k) for k in _LAUNCHER_ENV}
    # The config name too: a job started with --config-name must not come back as the default config.
    config_name = HydraConfig.get().job.config_name if HydraConfig.initialized() else None
    os.environ[JOB_ENV] = json.dumps({"run_dir": run_dir, "overrides": list(overrides), "config_name": config_name})
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
