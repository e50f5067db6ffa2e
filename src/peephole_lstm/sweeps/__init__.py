"""Sweeps: reports on a Hydra multirun dir (or W&B runs) per dataset group and arm across seeds, and job resume.

Names are imported on first use: Hydra imports the launcher plugin (and so this package) at every
`train.py` start, which must not pay for pandas and matplotlib.
"""
from importlib import import_module

_EXPORTS = {
    "Job": "jobs", "discover_jobs": "jobs", "jobs_from_runs": "jobs", "read_job": "jobs", "read_history": "jobs",
    "Variant": "aggregate", "Arm": "aggregate", "Group": "aggregate", "default_mode": "aggregate",
    "group_jobs": "aggregate", "split_groups": "aggregate", "metric_stats": "aggregate", "summarize": "aggregate",
    "Report": "report", "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
