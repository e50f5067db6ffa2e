#!/usr/bin/env python
"""Re-run the ready experiments at their defaults and regenerate their reports under docs/results/.

    python scripts/reproduce_results.py                       # all three, ~1 hour on a 2-core CPU
    python scripts/reproduce_results.py gers_timing           # one of them
    python scripts/reproduce_results.py gers_timing -- trainer.max_epochs=1 data.n_train=40   # smoke run

Each experiment runs as its own multirun (`python train.py experiment=NAME`) into
multirun/results/NAME/ (run dirs, checkpoints, W&B offline runs: not committed); its report (tables,
box plots, learning curves) goes to docs/results/NAME/ with run.json: the command, the wall time, the
machine and its load while it ran. docs/results.md is the hand-written reading of those reports.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each experiment is judged by (fixed before its results were seen) and the arm the others are
# tested against.
EXPERIMENTS = {
    "gers_timing": dict(metrics=["test/solve_rate", "test/timing_error", "test/nrmse"], reference="peephole=none"),
    "peephole_ablation": dict(metrics=["test/solve_rate", "test/nrmse"], reference="peephole=none"),
    "greff_variants": dict(metrics=["test/nrmse"], reference="variant=vanilla"),
    "gers_msd_external": dict(metrics=["test/solve_rate", "test/timing_error"], reference="peephole=none"),
}


def run(cmd: list[str]) -> float:
    print("+", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", default=list(EXPERIMENTS), help=f"default: {' '.join(EXPERIMENTS)}")
    p.add_argument("--out", default="docs/results", help="report root (default: docs/results)")
    p.add_argument("--runs", default="multirun/results", help="where the sweeps write their run dirs")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    for name in args.experiments:
        spec = EXPERIMENTS[name]
        sweep_dir, out = Path(args.runs) / name, Path(args.out) / name
        train = [sys.executable, "train.py", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}",
                 "extras.print_config=false", *extra]
        load_before = os.getloadavg()
        started = datetime.now(timezone.utc)
        wall = run(train)
        load_after = os.getloadavg()
        report = [sys.executable, "scripts/sweep_report.py", str(sweep_dir), "--out", str(out),
                  "--reference", spec["reference"], *[a for m in spec["metrics"] for a in ("--metric", m)]]
        run(report)
        (ROOT / out / "run.json").write_text(json.dumps({
            "command": shlex.join(["python", "train.py", f"experiment={name}", *extra]),
            "report_command": shlex.join(["python", *report[1:]]),
            "started_utc": started.isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "load_average_before_after": [round(x, 2) for x in (load_before[0], load_after[0])],
        }, indent=2) + "\n")
        print(f"{name}: {wall / 60:.1f} min; report in {out}/report.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
