"""Write a sweep report: report.md, report.csv (per group and arm), jobs.csv, and figures per group.

Jobs on different data or tasks are never pooled: every dataset group gets its own tables (one per
metric, arms side by side), learning-speed table, box plots and learning curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from peephole_lstm.sweeps.aggregate import (
    P_TOO_FEW,
    P_UNDEFINED,
    P_ZERO_VARIANCE,
    Group,
    Speed,
    available_metrics,
    default_metrics,
    default_mode,
    history_metrics,
    median_epochs,
    summarize,
)
from peephole_lstm.sweeps.jobs import COMPLETED, DATA_KEYS, Job, variant_overrides
from peephole_lstm.sweeps.plot import box_plot, curve_plot

SPEED_METRIC, SPEED_THRESHOLD = "val/solve_rate", 0.9
_FOOTNOTE = {
    P_ZERO_VARIANCE: ("†", "this arm and the reference gave the same value for every seed (zero variance in "
                           "both): Welch's t is undefined, so there is no p-value; compare the means directly."),
    P_TOO_FEW: ("‡", "fewer than 2 seeds with a value in this arm or the reference: no test."),
    P_UNDEFINED: ("§", "the Welch test returned no p-value (degenerate data)."),
}


@dataclass
class GroupReport:
    group: Group
    table: pd.DataFrame  # this group's rows of report.csv
    box_plots: dict[str, Path] = field(default_factory=dict)  # metric -> PNG
    curve_plots: dict[str, Path] = field(default_factory=dict)  # history metric -> PNG


@dataclass
class Report:
    markdown: Path
    csv: Path
    jobs_csv: Path
    groups: list[GroupReport] = field(default_factory=list)
    table: Optional[pd.DataFrame] = None

    @property
    def plots(self) -> list[Path]:
        return [p for g in self.groups for p in (*g.box_plots.values(), *g.curve_plots.values())]


def fmt(x) -> str:
    """4 significant digits; "-" for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


def _file_part(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def plot_name(metric: str, group_slug: str = "all", kind: str = "box") -> str:
    """e.g. box_test_nrmse__data-timing.png: the group's slug keeps groups from overwriting each other."""
    return f"{kind}_{_file_part(metric)}__{group_slug}.png"


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


def _check_history_metrics(jobs: Sequence[Job], names: Sequence[str], option: str) -> None:
    known = history_metrics(jobs)
    unknown = [m for m in names if m not in known]
    if unknown:
        where = ", ".join(known) if known else "none (no completed job has a history.csv)"
        raise ValueError(f"{option} {', '.join(unknown)} not in any completed job's history.csv; available: {where}")


def curve_metrics_for(group: Group, chosen: Optional[Sequence[str]]) -> list[str]:
    """The history metrics to draw learning curves of: the chosen ones this group has, or by default
    val/solve_rate if it has it, else val/loss."""
    known = history_metrics(group.jobs)
    if chosen:
        return [m for m in chosen if m in known]
    return next(([m] for m in (SPEED_METRIC, "val/loss") if m in known), [])


def write_report(
    jobs: Sequence[Job],
    out_dir: str | Path,
    metrics: Optional[Sequence[str]] = None,
    mode: Optional[str] = None,
    reference: Optional[str] = None,
    source: str = "",
    group_by: Optional[Sequence[str]] = None,
    curve_metrics: Optional[Sequence[str]] = None,
    speed_metric: Optional[str] = None,
    speed_threshold: float = SPEED_THRESHOLD,
) -> Report:
    """Report on `jobs` into `out_dir`. `group_by`: the override keys (and their dotted sub-keys) that
    define a dataset group (default `data`); `speed_metric` (default val/solve_rate, if the histories
    have it) and `speed_threshold`: the learning-speed criterion."""
    if not jobs:
        raise ValueError("the sweep has no jobs to report on")
    group_by = tuple(group_by) if group_by else DATA_KEYS
    if any(not k or "=" in k for k in group_by):
        raise ValueError(f"--group-by takes override keys such as data or data.task, not {list(group_by)}")
    modes = resolve_metrics(jobs, metrics, mode)
    if curve_metrics:
        _check_history_metrics(jobs, curve_metrics, "--curve-metric")
    if speed_metric is not None:
        _check_history_metrics(jobs, [speed_metric], "--speed-metric")
    if not math.isfinite(speed_threshold):
        raise ValueError(f"--speed-threshold must be a finite number, not {speed_threshold}")
    speed_name = speed_metric or SPEED_METRIC
    speed = Speed(speed_name, speed_threshold, default_mode(speed_name))
    table, groups = summarize(jobs, list(modes), modes, reference, group_by, speed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    report = Report(out_dir / "report.md", out_dir / "report.csv", out_dir / "jobs.csv", table=table)
    table.to_csv(report.csv, index=False)
    _jobs_frame(jobs, groups).to_csv(report.jobs_csv, index=False)
    for g in groups:
        gr = GroupReport(g, table[table["group"] == g.label].reset_index(drop=True))
        title = "" if len(groups) == 1 and g.label == "(all jobs)" else f"{g.label}: "
        for m, m_mode in modes.items():
            if any(a.values(m) for a in g.arms):
                gr.box_plots[m] = box_plot(g.arms, m, m_mode, out_dir / plot_name(m, g.slug), reference=g.reference,
                                           title=f"{title}{m} per arm across seeds", comparison=g.comparisons[m])
        for m in curve_metrics_for(g, curve_metrics):
            gr.curve_plots[m] = curve_plot(g.arms, m, default_mode(m), out_dir / plot_name(m, g.slug, "curve"),
                                           reference=g.reference,
                                           title=f"{title}{m}: median and interquartile range across seeds")
        report.groups.append(gr)
    report.markdown.write_text(_markdown(jobs, report, modes, speed, group_by, source))
    return report


def _jobs_frame(jobs: Sequence[Job], groups: Sequence[Group]) -> pd.DataFrame:
    where = {id(j): (g.label, a.label) for g in groups for a in g.arms for j in a.jobs}
    metric_names = sorted({m for j in jobs for m in j.metrics})
    rows = [
        {"job": j.name, "group": where[id(j)][0], "arm": where[id(j)][1], "seed": j.seed, "status": j.status,
         "error": j.error, **{m: j.metrics.get(m) for m in metric_names}, "path": j.path}
        for j in jobs
    ]
    return pd.DataFrame(rows)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *map(_row, rows)]


def _common_overrides(jobs: Sequence[Job], group_by: Sequence[str]) -> list[str]:
    """Overrides (other than group keys and seed) that every job has: the sweep's fixed settings."""
    sets = [set(variant_overrides(j, group_by)) for j in jobs]
    common = set.intersection(*sets) if sets else set()
    return [o for o in variant_overrides(jobs[0], group_by) if o in common]


def _markdown(jobs, report: Report, modes: dict[str, str], speed: Speed, group_by, source: str) -> str:
    n_failed = sum(j.status != COMPLETED for j in jobs)
    keys = ", ".join(f"`{k}`" for k in group_by)
    common = _common_overrides(jobs, group_by)
    lines = [
        f"# Sweep report{': ' + source if source else ''}",
        "",
        f"{len(jobs)} jobs in {len(report.groups)} group{'s' * (len(report.groups) != 1)}, {n_failed} failed or "
        "incomplete." + (f" Set in every job: {', '.join(f'`{o}`' for o in common)}." if common else ""),
        "",
        f"Jobs are split into groups by their {keys} overrides (a key or its dotted sub-keys) and never pooled "
        "across groups. Within a group an arm is a job's overrides minus `seed` and the group keys. Per arm and "
        "metric: jobs and failed (not completed) jobs; n = seeds with a finite value; mean ± sample std over "
        "seeds; the 95% confidence interval of the mean (mean ± t(0.975, n-1)·s/√n); the value of every "
        "completed seed in seed order; the best seed (min or max as marked). **Bold**: the group's best mean. "
        "Values to 4 significant digits.",
    ]
    for gr in report.groups:
        lines += _group_markdown(gr, modes, speed)
    failed = [j for j in jobs if j.status != COMPLETED]
    if failed:
        where = {id(j): (gr.group.label, a.label) for gr in report.groups for a in gr.group.arms for j in a.jobs}
        rows = []
        for j in failed:
            error = (j.error or "").strip().splitlines()
            rows.append([j.name, *where[id(j)], str(j.seed), j.status, error[-1][:200] if error else ""])
        lines += ["", "## Failed or incomplete jobs", "", *_table(["job", "group", "arm", "seed", "status", "error"], rows)]
    return "\n".join(lines) + "\n"


def _group_markdown(gr: GroupReport, modes: dict[str, str], speed: Speed) -> list[str]:
    g = gr.group
    seeds = g.seeds()
    lines = [
        "",
        f"## {g.label}",
        "",
        f"{len(g.jobs)} jobs, {len(g.arms)} arm{'s' * (len(g.arms) != 1)}, "
        f"{len(seeds)} seed{'s' * (len(seeds) != 1)}" + (f" ({', '.join(map(str, seeds))})" if seeds else "") + ".",
    ]
    ref = g.reference
    if ref is not None:
        lines[-1] += (f" Reference arm: `{ref.label}`. p: two-sided Welch t-test of each arm against it; "
                      "p (Holm): Holm-corrected over the k comparisons with the reference in this group for "
                      "that metric (k under each table).")
    elif len(g.arms) > 1:
        lines[-1] += f" No reference arm ({g.reference_note}), so no p-values."
    for m, mode in modes.items():
        if not any(a.seed_values(m) for a in g.arms):
            continue  # a metric of another group's task
        lines += ["", f"### {m} ({'higher' if mode == 'max' else 'lower'} is better)", ""]
        lines += _metric_table(gr, m, mode)
    if g.speed:
        lines += ["", f"### Learning speed: epochs until {speed.criterion}", ""]
        rows = []
        for a in g.arms:
            epochs = [e for _, e in g.speed[a.label]]
            median = median_epochs(epochs)
            rows.append([a.label, ", ".join("never" if e is None else str(e) for e in epochs) or "-",
                         ("never" if epochs else "-") if median is None else fmt(median),
                         f"{sum(e is not None for e in epochs)}/{len(epochs)}" if epochs else "-"])
        lines += _table(["arm", "epochs per seed", "median", "reached"], rows)
        lines += ["", "Epochs counted from 1, per completed seed in seed order; never: not within the run. The "
                      "median counts never as later than any epoch (never when at least half the seeds never got "
                      "there)."]
    if gr.box_plots or gr.curve_plots:
        lines += ["", "### Figures", ""]
        lines += [f"![{m}, box plot]({p.name})" for m, p in gr.box_plots.items()]
        lines += [f"![{m}, learning curves]({p.name})" for m, p in gr.curve_plots.items()]
    return lines


def _metric_table(gr: GroupReport, metric: str, mode: str) -> list[str]:
    g, ref = gr.group, gr.group.reference
    comparison = g.comparisons[metric]
    by_arm = {row["arm"]: row for _, row in gr.table.iterrows()}
    means = [by_arm[a.label][f"{metric}_mean"] for a in g.arms]
    finite = [x for x in means if not math.isnan(x)]
    best_mean = (min(finite) if mode == "min" else max(finite)) if finite else math.nan
    header = ["arm", "jobs", "failed", "n", "mean ± std", "95% CI", "per seed", f"best ({mode})"]
    if ref is not None:
        header += ["p", "p (Holm)"]
    rows, notes = [], []
    for a in g.arms:
        row = by_arm[a.label]
        mean_std = f"{fmt(row[f'{metric}_mean'])} ± {fmt(row[f'{metric}_std'])}"
        if not math.isnan(row[f"{metric}_mean"]) and row[f"{metric}_mean"] == best_mean:
            mean_std = f"**{mean_std}**"
        ci = "-" if math.isnan(row[f"{metric}_ci_low"]) else f"[{fmt(row[f'{metric}_ci_low'])}, {fmt(row[f'{metric}_ci_high'])}]"
        per_seed = ", ".join(fmt(v) if math.isfinite(v) else str(v) for _, v in a.seed_values(metric)) or "-"
        cells = [a.label, str(row["jobs"]), str(row["failed"]), str(int(row[f"{metric}_n"])), mean_std, ci, per_seed,
                 fmt(row[f"{metric}_best"])]
        if ref is not None:
            if a is ref:
                cells += ["ref.", "ref."]
            elif a.label in comparison.why_missing:
                mark, note = _FOOTNOTE[comparison.why_missing[a.label]]
                cells += [f"-{mark}", f"-{mark}"]
                if (mark, note) not in notes:
                    notes.append((mark, note))
            else:
                cells += [fmt(comparison.p[a.label]), fmt(comparison.p_holm[a.label])]
        rows.append(cells)
    lines = _table(header, rows)
    if ref is not None:
        lines += ["", f"k = {comparison.k} comparison{'s' * (comparison.k != 1)} with `{ref.label}` "
                      f"(Holm's family for {metric} in this group)."]
        for mark, note in notes:
            lines += ["", f"{mark} {note}"]
    return lines
