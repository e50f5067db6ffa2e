"""Write a sweep report: report.md (Markdown table), report.csv (per variant), jobs.csv, box plots."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from peephole_lstm.sweeps.aggregate import (
    available_metrics,
    default_metrics,
    default_mode,
    find_reference,
    summarize,
)
from peephole_lstm.sweeps.jobs import COMPLETED, Job
from peephole_lstm.sweeps.plot import box_plot


@dataclass
class Report:
    markdown: Path
    csv: Path
    jobs_csv: Path
    plots: dict[str, Path] = field(default_factory=dict)
    table: Optional[pd.DataFrame] = None


def fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def plot_name(metric: str) -> str:
    return "box_" + "".join(c if c.isalnum() else "_" for c in metric) + ".png"


def resolve_metrics(jobs: Sequence[Job], metrics: Optional[Sequence[str]], mode: Optional[str]) -> dict[str, str]:
    """The metrics to report, each with its optimisation direction; unknown names fail here."""
    if mode not in (None, "min", "max"):
        raise ValueError(f"mode={mode!r} is not valid; allowed values: 'min', 'max'")
    known = available_metrics(jobs)
    chosen = list(metrics) if metrics else default_metrics(jobs)
    unknown = [m for m in chosen if m not in known]
    if unknown and any(j.status == COMPLETED for j in jobs):
        raise ValueError(
            f"metric(s) {', '.join(unknown)} not reported by any completed job; available: {', '.join(known) or 'none'}"
        )
    return {m: mode or default_mode(m) for m in chosen}


def write_report(
    jobs: Sequence[Job],
    out_dir: str | Path,
    metrics: Optional[Sequence[str]] = None,
    mode: Optional[str] = None,
    reference: Optional[str] = None,
    source: str = "",
) -> Report:
    if not jobs:
        raise ValueError("the sweep has no jobs to report on")
    modes = resolve_metrics(jobs, metrics, mode)
    table, variants, varying = summarize(jobs, list(modes), modes, reference)
    ref = find_reference(variants, reference)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    report = Report(out_dir / "report.md", out_dir / "report.csv", out_dir / "jobs.csv", table=table)
    table.to_csv(report.csv, index=False)
    _jobs_frame(jobs, variants).to_csv(report.jobs_csv, index=False)
    for m, m_mode in modes.items():
        report.plots[m] = box_plot(variants, m, m_mode, out_dir / plot_name(m), reference=ref)
    report.markdown.write_text(_markdown(jobs, table, variants, modes, ref, report, source))
    return report


def _jobs_frame(jobs: Sequence[Job], variants) -> pd.DataFrame:
    variant_of = {id(j): v.label for v in variants for j in v.jobs}
    metric_names = sorted({m for j in jobs for m in j.metrics})
    rows = [
        {"job": j.name, "variant": variant_of[id(j)], "seed": j.seed, "status": j.status, "error": j.error,
         **{m: j.metrics.get(m) for m in metric_names}, "path": j.path}
        for j in jobs
    ]
    return pd.DataFrame(rows)


def _markdown(jobs, table: pd.DataFrame, variants, modes: dict[str, str], ref, report: Report, source: str) -> str:
    n_failed = sum(j.status != COMPLETED for j in jobs)
    lines = [
        f"# Sweep report{': ' + source if source else ''}",
        "",
        f"{len(jobs)} jobs, {len(variants)} variants, {n_failed} failed or incomplete. "
        "Per variant (a job's overrides minus `seed`): mean ± sample std over seeds, the best seed "
        "(min or max as marked), n = seeds with a finite value. Bold: best mean.",
    ]
    if ref is not None:
        lines.append(f"p = two-sided Welch t-test against the reference variant `{ref.label}`.")
    header = ["variant", "jobs", "failed"]
    for m, mode in modes.items():
        header += [f"{m} mean ± std", f"{m} best ({mode})", "n"] + (["p"] if ref is not None else [])
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_mean = {m: _best(table[f"{m}_mean"], mode) for m, mode in modes.items()}
    for _, row in table.iterrows():
        cells = [str(row["variant"]), str(row["jobs"]), str(row["failed"])]
        for m in modes:
            mean_std = f"{fmt(row[f'{m}_mean'])} ± {fmt(row[f'{m}_std'])}"
            if not math.isnan(row[f"{m}_mean"]) and row[f"{m}_mean"] == best_mean[m]:
                mean_std = f"**{mean_std}**"
            cells += [mean_std, fmt(row[f"{m}_best"]), str(int(row[f"{m}_n"]))]
            if ref is not None:
                cells.append(fmt(row[f"{m}_p_vs_ref"]))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")

    failed = [j for j in jobs if j.status != COMPLETED]
    if failed:
        variant_of = {id(j): v.label for v in variants for j in v.jobs}
        lines += ["", "## Failed or incomplete jobs", "", "| job | variant | seed | status | error |", "|---|---|---|---|---|"]
        for j in failed:
            error = (j.error or "").strip().splitlines()
            cells = [j.name, variant_of[id(j)], str(j.seed), j.status, error[-1][:200] if error else ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Box plots", ""]
    lines += [f"![{m}]({p.name})" for m, p in report.plots.items()]
    return "\n".join(lines) + "\n"


def _best(means: pd.Series, mode: str) -> float:
    finite = means.dropna()
    if finite.empty:
        return float("nan")
    return finite.min() if mode == "min" else finite.max()
