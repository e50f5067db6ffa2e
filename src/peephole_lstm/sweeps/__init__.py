"""Sweep reports: read a Hydra multirun dir (or W&B runs), aggregate per variant across seeds, plot."""
from peephole_lstm.sweeps.aggregate import Variant, default_mode, group_jobs, metric_stats, summarize
from peephole_lstm.sweeps.jobs import Job, discover_jobs, jobs_from_runs, read_job
from peephole_lstm.sweeps.report import Report, write_report

__all__ = [
    "Job",
    "Report",
    "Variant",
    "default_mode",
    "discover_jobs",
    "group_jobs",
    "jobs_from_runs",
    "metric_stats",
    "read_job",
    "summarize",
    "write_report",
]
