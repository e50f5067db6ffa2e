"""Run this checkout's entry points (train.py, eval.py, scripts/*.py, `python -m pytest`) as real
processes, all with one environment policy (`script_env`), and read back what the runs left.

Starting a process costs seconds (Python, torch and Lightning import anew), so a test that does is
`@pytest.mark.slow`: `run_script` fails a test that is not (tests/conftest.py tells it which test is
running), which keeps `python -m pytest -m "not slow"` fast.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Variables the test process may carry that must not reach a child: a DDP rank or a SLURM job of the
# session that runs pytest would turn the child into a rank of it; W&B credentials would let a child
# reach the network; HYDRA_FULL_ERROR is set per call (full_error=).
_NOT_INHERITED = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "WANDB_API_KEY",
                  "PEEPHOLE_LSTM_DDP_JOB", "HYDRA_FULL_ERROR")

# The item whose setup, call or teardown is running (set by tests/conftest.py), or None outside pytest.
current_item: pytest.Item | None = None


def script_env(*, pythonpath=(), full_error: bool = False, **extra: str) -> dict[str, str]:
    """The environment of every child process: the test process's, minus what must not leak (above),
    W&B offline and silent (tests never touch the network), unbuffered output (stdout and stderr
    interleave as a terminal shows them), HYDRA_FULL_ERROR=1 only with full_error=True (else a user error
    is the one-line message users see), and PYTHONPATH = `pythonpath` (e.g. a test's own callback
    module), then this checkout's src/, then the inherited PYTHONPATH: a test in a git worktree runs
    that worktree's code, whatever the venv's editable install points at."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.startswith("SLURM_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    paths = [str(p) for p in pythonpath] + [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # in order, without repeats
    env.update(extra)
    return env


def command(script: str, *args) -> list[str]:
    """`python <script> args...` with this interpreter: `script` is a path relative to the checkout
    ("train.py", "scripts/export.py"), or "-m"/"-c" followed by its argument."""
    target = [script] if script.startswith("-") else [str(ROOT / script)]
    return [sys.executable, *target, *map(str, args)]


def require_slow(what: str) -> None:
    """Fail the running test unless it is marked slow: starting `what` takes seconds."""
    if current_item is not None and current_item.get_closest_marker("slow") is None:
        pytest.fail(f"{current_item.nodeid} starts a process ({what}): mark it @pytest.mark.slow "
                    "(docs/testing.md)", pytrace=False)


def run_script(script: str, *args, cwd: Path = ROOT, timeout: float = 300, merge_output: bool = False,
               pythonpath=(), full_error: bool = False, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """`python <script> args...` in `cwd`, in `script_env(pythonpath=, full_error=, **env)`, its output
    captured as text (with merge_output=True, stderr goes into stdout, in the order it was written)."""
    cmd = command(script, *args)
    require_slow(" ".join(cmd[1:3]))
    stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
    return subprocess.run(cmd, cwd=cwd, env=script_env(pythonpath=pythonpath, full_error=full_error, **(env or {})),
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout)


def start_script(script: str, *args, cwd: Path = ROOT, pythonpath=(), env: dict[str, str] | None = None,
                 **popen) -> subprocess.Popen:
    """`run_script` without waiting: the process, for a test that kills or signals it."""
    cmd = command(script, *args)
    require_slow(" ".join(cmd[1:3]))
    return subprocess.Popen(cmd, cwd=cwd, env=script_env(pythonpath=pythonpath, **(env or {})), **popen)


def run_sweep(*overrides: str, cwd: Path, sweep_dir: bool = True, timeout: float = 300,
              pythonpath=()) -> subprocess.CompletedProcess:
    """`python train.py overrides...` for a multirun: its sweep dir at cwd/sweep (else Hydra's default),
    HYDRA_FULL_ERROR=1 so that a failed job's traceback is in `explain(proc)`."""
    where = [f"hydra.sweep.dir={cwd / 'sweep'}"] if sweep_dir else []
    return run_script("train.py", *overrides, *where, cwd=cwd, timeout=timeout, pythonpath=pythonpath,
                      full_error=True)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{(proc.stderr or '')[-6000:]}"


def run_dirs(cwd: Path, task_name: str = "train") -> list[Path]:
    """The run dirs a single (not -m) run made under cwd/outputs/<task_name>/runs/."""
    return sorted((cwd / "outputs" / task_name / "runs").glob("*"))


def job_dirs(sweep: Path) -> list[Path]:
    """A multirun's job dirs, in job order."""
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def csv_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's CSV log (logger=csv)."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))
