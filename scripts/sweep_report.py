#!/usr/bin/env python
"""Report on a sweep: mean ± std and best per variant across seeds, as Markdown, CSV and box plots.

    python scripts/sweep_report.py multirun/2026-01-01/12-00-00                # local, no network
    python scripts/sweep_report.py SWEEP_DIR --metric test/nrmse --metric test/mae --mode min
    python scripts/sweep_report.py --wandb ENTITY/PROJECT --group SWEEP_GROUP --out report/   # online
"""
from __future__ import annotations

import argparse
import sys

from peephole_lstm.sweeps import discover_jobs, jobs_from_runs, write_report
from peephole_lstm.sweeps.wandb_api import WandbUnavailable, fetch_runs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", nargs="?", help="Hydra multirun dir (multirun/<date>/<time>/)")
    p.add_argument("--metric", action="append", help="metric to report (repeatable); default: all test/* metrics")
    p.add_argument("--mode", choices=["min", "max"], help="default: max for accuracies, min otherwise")
    p.add_argument("--out", help="output dir; default: SWEEP_DIR (or ./sweep_report with --wandb)")
    p.add_argument("--reference", help="variant to test the others against (substring of its label); "
                                       "default: the variant labelled vanilla, if any")
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
                              source=source)
    except (FileNotFoundError, ValueError, WandbUnavailable) as e:
        print(f"sweep_report: error: {e}", file=sys.stderr)
        return 2
    print(report.markdown.read_text())
    print(f"wrote {report.markdown}, {report.csv}, {report.jobs_csv}, " + ", ".join(map(str, report.plots.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
