#!/usr/bin/env python
"""Re-run the ready experiments at their defaults and regenerate their reports under docs/results/.

    python scripts/reproduce_results.py                       # all five, about an hour on a 2-core CPU
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
    "greff_jsb": dict(metrics=["test/nll"], reference="variant=vanilla"),
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
    p.add_argument("--report-only", action="store_true",
                   help="only regenerate the reports from the sweeps already in --runs (keeps their run.json)")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    failed = []
    for name in args.experiments:
        spec = EXPERIMENTS[name]
        sweep_dir, out = Path(args.runs) / name, ROOT / args.out / name
        out.mkdir(parents=True, exist_ok=True)
        if not args.report_only:
            train = [sys.executable, "train.py", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}",
                     "extras.print_config=false", *extra]
            load_before, started = os.getloadavg(), datetime.now(timezone.utc)
            wall = run(train)
            # Written before the report, so a report error never loses the measurement.
            (out / "run.json").write_text(json.dumps({
                "command": shlex.join(["python", "train.py", f"experiment={name}", *extra]),
                "started_utc": started.isoformat(timespec="seconds"),
                "wall_seconds": round(wall, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            }, indent=2) + "\n")
            print(f"{name}: {wall / 60:.1f} min", flush=True)
        report = [sys.executable, "scripts/sweep_report.py", str(sweep_dir), "--out", str(out),
                  "--reference", spec["reference"], *[a for m in spec["metrics"] for a in ("--metric", m)]]
        try:
            run(report)
        except subprocess.CalledProcessError as e:  # the next experiment still runs
            print(f"{name}: the report failed ({e}); rerun with --report-only", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"{name}: report in {out / 'report.md'}", flush=True)
    if failed:
        print(f"reports failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
