#!/usr/bin/env python
"""Report on a sweep, per dataset group and arm across seeds: Markdown, CSV, box plots, learning curves.

Jobs with different `data`/`data.*` overrides are never pooled: each group gets its own tables (mean ±
std, 95% CI, per-seed values, Welch t-test against a reference arm with Holm correction), learning
speed (epochs until val/solve_rate >= 0.9, from each job's history.csv) and figures.

    python scripts/sweep_report.py multirun/2026-01-01/12-00-00                # local, no network
    python scripts/sweep_report.py SWEEP_DIR --metric test/solve_rate --metric test/timing_error --reference peephole=none
    python scripts/sweep_report.py SWEEP_DIR --group-by data.task --curve-metric val/loss --speed-threshold 0.95
    python scripts/sweep_report.py --wandb ENTITY/PROJECT --group SWEEP_GROUP --out report/   # online
"""
from __future__ import annotations

import argparse
import sys

from peephole_lstm.sweeps import discover_jobs, jobs_from_runs, write_report
from peephole_lstm.sweeps.report import SPEED_THRESHOLD
from peephole_lstm.sweeps.wandb_api import WandbUnavailable, fetch_runs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", nargs="?", help="Hydra multirun dir (multirun/<date>/<time>/)")
    p.add_argument("--metric", action="append", help="metric to report (repeatable); default: all test/* metrics")
    p.add_argument("--mode", choices=["min", "max"],
                   help="direction of every --metric; default: max for accuracies and solve rates, min otherwise")
    p.add_argument("--out", help="output dir; default: SWEEP_DIR (or ./sweep_report with --wandb)")
    p.add_argument("--reference", metavar="SUBSTRING",
                   help="arm to test the others against (a substring of its label; it must match one arm in each "
                        "group it matches in); default: the arm labelled vanilla, else the one with peephole=none")
    p.add_argument("--group-by", metavar="KEY", action="append",
                   help="override key whose value (and whose dotted sub-keys' values) defines a dataset group "
                        "(repeatable); default: data and recipe")
    p.add_argument("--curve-metric", metavar="METRIC", action="append",
                   help="history.csv metric to draw learning curves of (repeatable); "
                        "default: val/solve_rate if present, else val/loss")
    p.add_argument("--speed-metric", metavar="METRIC",
                   help="history.csv metric for learning speed (epochs until it first reaches --speed-threshold; "
                        "<= for a metric that is minimised); default: val/solve_rate when the histories have it")
    p.add_argument("--speed-threshold", type=float, default=SPEED_THRESHOLD, metavar="X",
                   help=f"default: {SPEED_THRESHOLD}")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API instead (online)")
    p.add_argument("--group", help="with --wandb: only the runs of this W&B group (one sweep)")
    args = p.parse_args(argv)
    if (args.sweep_dir is None) == (args.wandb is None):
        p.error("give exactly one of SWEEP_DIR or --wandb ENTITY/PROJECT")
    if args.group and not args.wandb:
        p.error("--group only applies with --wandb")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.wandb:
            jobs = jobs_from_runs(fetch_runs(args.wandb, args.group))
            source = args.wandb + (f" group {args.group}" if args.group else "")
            out = args.out or "sweep_report"
        else:
            jobs = discover_jobs(args.sweep_dir)
            source, out = args.sweep_dir, args.out or args.sweep_dir
        report = write_report(jobs, out, metrics=args.metric, mode=args.mode, reference=args.reference,
                              source=source, group_by=args.group_by, curve_metrics=args.curve_metric,
                              speed_metric=args.speed_metric, speed_threshold=args.speed_threshold)
    except (FileNotFoundError, ValueError, WandbUnavailable) as e:
        print(f"sweep_report: error: {e}", file=sys.stderr)
        return 2
    print(report.markdown.read_text())
    print(f"wrote {report.markdown}, {report.csv}, {report.jobs_csv}" + "".join(f", {p}" for p in report.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
