"""Run real `train.py -m` sweeps with tiny settings and read back what their jobs left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A short timing task, a 4-unit LSTM, two batches per split: each job takes seconds.
TINY = [
    "data=timing", "data.n_train=32", "data.n_val=16", "data.n_test=16", "data.seq_len=20",
    "data.delay_min=2", "data.delay_max=10", "data.batch_size=16", "model.hidden_size=4",
    "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1", "extras.print_config=false", "callbacks.model_summary=null",
    "callbacks.rich_progress_bar=null", "callbacks.prediction_plot=null", "+trainer.enable_progress_bar=false",
]


def run_train(*overrides: str, cwd: Path, env: dict | None = None, timeout: float = 300,
              sweep_dir: bool = True) -> subprocess.CompletedProcess:
    """`python train.py overrides...` in `cwd`, W&B offline, its sweep dir at cwd/sweep (else Hydra's default)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", **(env or {})}
    for var in ("LOCAL_RANK", "WANDB_API_KEY", "PEEPHOLE_LSTM_DDP_JOB"):
        full_env.pop(var, None)
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides] + ([f"hydra.sweep.dir={cwd / 'sweep'}"] if sweep_dir else [])
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name))


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
