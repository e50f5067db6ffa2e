"""The jobs of a sweep, read either from a Hydra multirun directory or from W&B run records.

Both sources are reduced to the same `Job` record, so grouping, statistics and plots have one
implementation. The local reader relies only on the run directory's layout (peephole_lstm.rundir: ``.hydra/``,
``results.json`` and the optional per-epoch ``history.csv``); it needs neither W&B nor the training code.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from peephole_lstm import rundir

COMPLETED = rundir.COMPLETED
FAILED = rundir.FAILED
MISSING = "missing"  # no results.json: the job was killed, is still running, or never started
INVALID = "invalid"  # results.json exists but cannot be read
RUNNING = "running"  # W&B only: the run has not finished yet

SEED_KEY = "seed"
# Overrides a requeued job gains to resume (peephole_lstm.sweeps.launcher); they do not change its variant.
RESUME_KEYS = ("ckpt_path",)
# Override keys that name the dataset or task: jobs that differ in them are never pooled in a report
# (a recipe, conf/recipe/, is a dataset with its training budget).
DATA_KEYS = ("data", "recipe")


@dataclass
class Job:
    name: str  # the job's subdir name (Hydra's job number) or the W&B run name
    overrides: list[str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    seed: Optional[int] = None
    path: Optional[str] = None
    # metric -> [(epoch, value)] in epoch order, epochs 0-based as in history.csv; empty without one
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def split_override(override: str) -> tuple[str, str]:
    """`+model.x=1` -> ("model.x", "1"); the +/++/~ prefixes only say how Hydra applies the key."""
    key, sep, value = override.partition("=")
    return key.lstrip("+~"), value if sep else ""


def key_matches(key: str, prefixes: Iterable[str]) -> bool:
    """Whether override key `key` is one of `prefixes` or below one: "data.task" matches "data"."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def group_overrides(job: Job, group_by: Iterable[str] = DATA_KEYS) -> tuple[str, ...]:
    """What identifies a job's dataset group: its overrides whose key matches `group_by`, canonically ordered."""
    group_by = tuple(group_by)
    kept = (o for o in job.overrides if key_matches(split_override(o)[0], group_by))
    return tuple(sorted(kept, key=lambda o: split_override(o)[0]))


def variant_overrides(job: Job, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """What identifies a job's variant (arm): its overrides without the seed, resume keys and the keys
    matching `exclude` (the group keys), canonically ordered."""
    exclude = tuple(exclude)

    def kept(key: str) -> bool:
        return key not in (SEED_KEY, *RESUME_KEYS) and not key_matches(key, exclude)

    return tuple(sorted((o for o in job.overrides if kept(split_override(o)[0])), key=lambda o: split_override(o)[0]))


def _job_sort_key(path: Path):
    # Hydra numbers jobs 0..N-1; sort them numerically so "10" comes after "9".
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def discover_jobs(sweep_dir: str | Path) -> list[Job]:
    """Read every job of a Hydra multirun dir: the subdirs that contain a `.hydra/` folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {str(sweep_dir)!r} does not exist or is not a directory")
    job_dirs = sorted((d for d in sweep_dir.iterdir() if rundir.is_job_dir(d)), key=_job_sort_key)
    if not job_dirs:
        raise ValueError(
            f"{str(sweep_dir)!r} contains no Hydra job dirs (numbered subdirs with a .hydra/ folder); "
            "pass a multirun dir such as multirun/<date>/<time>/"
        )
    return [read_job(d) for d in job_dirs]


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = rundir.overrides_path(job_dir)
    if not path.is_file():
        return []
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def _seed_from_overrides(overrides: Iterable[str]) -> Optional[int]:
    for o in overrides:
        key, value = split_override(o)
        if key == SEED_KEY and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    return None


def _numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    # bools are ints in Python but never metrics; NaN is kept (a diverged run is a result).
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not str(k).startswith("_")
    }


def read_history(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """history.csv -> {metric: [(epoch, value), ...]} sorted by epoch; an empty cell is a missing value.

    No file gives {}. A malformed file is an error: a learning curve silently cut short would mislead.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "epoch":
        raise ValueError(f"{path}: the header must start with 'epoch' (got {','.join(rows[0]) if rows else 'an empty file'})")
    names = rows[0][1:]
    history: dict[str, list[tuple[int, float]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) > len(rows[0]):
            raise ValueError(f"{path}:{line}: {len(row)} cells, the header has {len(rows[0])}")
        try:
            epoch = int(float(row[0]))
            cells = [(name, float(cell)) for name, cell in zip(names, row[1:]) if cell.strip()]
        except ValueError as e:
            raise ValueError(f"{path}:{line}: not a number ({e})") from None
        for name, value in cells:
            history.setdefault(name, []).append((epoch, value))
    for points in history.values():
        points.sort()
        epochs = [e for e, _ in points]
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"{path}: epoch {next(e for e in epochs if epochs.count(e) > 1)} appears twice")
    return history


def read_job(job_dir: str | Path) -> Job:
    job_dir = Path(job_dir)
    overrides = _hydra_overrides(job_dir)
    history = read_history(rundir.history_path(job_dir))
    try:
        results = rundir.read_results(job_dir)
    except ValueError as e:
        return Job(job_dir.name, overrides, INVALID, error=f"unreadable results.json: {e}", path=str(job_dir),
                   seed=_seed_from_overrides(overrides), history=history)
    if results is None:
        return Job(
            name=job_dir.name,
            overrides=overrides,
            status=MISSING,
            error="no results.json (the job was killed, is still running, or crashed before writing it)",
            seed=_seed_from_overrides(overrides),
            path=str(job_dir),
            history=history,
        )
    overrides = [str(o) for o in results.get("overrides", overrides)]
    status = results.get("status")
    seed = results.get("seed")
    return Job(
        name=job_dir.name,
        overrides=overrides,
        status=status if status in (COMPLETED, FAILED) else INVALID,
        metrics=_numeric_metrics(results.get("metrics") or {}),
        error=results.get("error") if status in (COMPLETED, FAILED) else f"unknown status {status!r}",
        seed=seed if isinstance(seed, int) else _seed_from_overrides(overrides),
        path=str(job_dir),
        history=history,
    )


# --- W&B runs -----------------------------------------------------------------------------------

_WANDB_STATES = {"finished": COMPLETED, "failed": FAILED, "crashed": FAILED, "killed": FAILED, "running": RUNNING}
# Config entries that differ between runs of one variant and so must not split it into groups.
_NOT_A_VARIANT = re.compile(r"(^|\.)(seed|[a-z_]*dir|[a-z_]*path|paths|hydra|wandb|tags|ckpt_path)(\.|$)")


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _config_overrides(configs: list[dict[str, Any]]) -> list[list[str]]:
    """Reconstruct per-run "key=value" overrides from the config entries that vary across runs."""
    flats = [_flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f if not _NOT_A_VARIANT.search(k)})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
    return [[f"{k}={f.get(k)}" for k in varying] for f in flats]


def jobs_from_runs(runs: list[Mapping[str, Any]]) -> list[Job]:
    """Turn W&B run records into jobs.

    Each record is a mapping with ``name``, ``state`` (W&B's: finished/failed/crashed/running),
    ``config`` (the nested config) and ``summary`` (final metrics); that is what
    `peephole_lstm.sweeps.wandb_api.fetch_runs` returns. A run whose config holds the Hydra
    ``overrides`` list is grouped by it; otherwise by the config entries that differ between runs.
    """
    configs = [dict(r.get("config") or {}) for r in runs]
    derived = _config_overrides(configs)
    jobs = []
    for run, config, fallback in zip(runs, configs, derived):
        overrides = config.get("overrides")
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else fallback
        seed = _flatten(config).get(SEED_KEY)
        state = str(run.get("state", ""))
        status = _WANDB_STATES.get(state, INVALID)
        jobs.append(
            Job(
                name=str(run.get("name") or run.get("id")),
                overrides=overrides,
                status=status,
                metrics=_numeric_metrics(run.get("summary") or {}),
                error=None if status == COMPLETED else f"W&B run state {state!r}",
                seed=seed if isinstance(seed, int) else _seed_from_overrides(overrides),
            )
        )
    return jobs
