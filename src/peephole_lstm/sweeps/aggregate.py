"""Split a sweep's jobs into dataset groups and arms, and aggregate each arm's metrics across seeds.

A *group* is the set of jobs that ran on the same data and task (the same `data`/`data.*` overrides by
default): groups are never pooled, since a mean over NRMSEs of different tasks means nothing. Within a
group an *arm* (called a variant in Greff et al.'s terms) is a job's overrides minus the seed, resume keys
and group keys; its seeds are the samples every statistic is taken over.
"""
from __future__ import annotations

import hashlib
import math
import re
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pandas as pd

from peephole_lstm.sweeps.jobs import (
    COMPLETED,
    DATA_KEYS,
    Job,
    group_overrides,
    split_override,
    variant_overrides,
)

# Metrics where larger is better; every other metric (losses, errors, bpc, ppl) is minimised.
_MAXIMISED = ("acc", "accuracy", "f1", "auroc", "r2", "solve_rate")

# Why a p-value is missing (the report prints "-" and a footnote instead of a number).
P_ZERO_VARIANCE = "zero_variance"  # both arms: every seed gave the same value, Welch's t is undefined
P_TOO_FEW = "too_few"  # an arm has fewer than 2 finite values
P_UNDEFINED = "undefined"  # anything else that left scipy's p NaN


def default_mode(metric: str) -> str:
    return "max" if metric.rsplit("/", 1)[-1].lower() in _MAXIMISED else "min"


def _seed_order(job: Job):
    # Jobs without a known seed (a W&B run without one) go last, in their sweep order.
    return (job.seed is None, job.seed if job.seed is not None else 0)


@dataclass
class Variant:
    """One arm of a group: the jobs (one per seed) that share every setting but the seed."""

    label: str  # the overrides that differ between the group's arms, e.g. "model.peephole=full"
    settings: dict[str, str]  # the same as key -> value, one CSV column per key
    jobs: list[Job]

    def values(self, metric: str) -> list[float]:
        """The finite values of `metric` over the arm's completed jobs (one per seed), in seed order."""
        return [v for _, v in self.seed_values(metric) if math.isfinite(v)]

    def seed_values(self, metric: str) -> list[tuple[Optional[int], float]]:
        """(seed, value) of every completed job that reports `metric`, NaN included, sorted by seed."""
        done = sorted((j for j in self.jobs if j.status == COMPLETED and metric in j.metrics), key=_seed_order)
        return [(j.seed, j.metrics[metric]) for j in done]

    @property
    def n_failed(self) -> int:
        return sum(j.status != COMPLETED for j in self.jobs)


Arm = Variant


@dataclass
class Group:
    """The jobs of one dataset/task, split into arms; `reference` is the arm the others are tested against."""

    label: str  # the group's overrides, e.g. "data=timing, data.task=msd", or "(all jobs)"
    settings: dict[str, str]
    jobs: list[Job]
    arms: list[Variant]
    varying: list[str]  # the override keys that differ between the arms
    slug: str = ""  # file-name-safe and unique among the sweep's groups
    reference: Optional[Variant] = None
    reference_note: str = ""  # why there is no reference arm, when there is none
    comparisons: dict[str, "Comparison"] = field(default_factory=dict)  # metric -> tests vs the reference
    # arm label -> [(seed, epochs until the speed criterion was met, None: never)]; empty without histories
    speed: dict[str, list[tuple[Optional[int], Optional[int]]]] = field(default_factory=dict)

    def seeds(self) -> list[int]:
        return sorted({j.seed for j in self.jobs if j.seed is not None})


def group_jobs(jobs: Sequence[Job], exclude: Sequence[str] = ()) -> tuple[list[Variant], list[str]]:
    """Group jobs into arms by their overrides minus `seed` (and the keys matching `exclude`), keeping
    the sweep's order of first appearance.

    Returns the arms and the override keys that vary between them. Keys set identically in every job
    (e.g. `trainer.max_epochs=1` on the command line) are left out of the labels.
    """
    settings = [dict(split_override(o) for o in variant_overrides(j, exclude)) for j in jobs]
    all_keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in all_keys if len({s.get(k) for s in settings}) > 1]
    variants: dict[tuple, Variant] = {}
    for job, s in zip(jobs, settings):
        key = variant_overrides(job, exclude)
        if key not in variants:
            shown = {k: s.get(k, "") for k in varying}
            label = ", ".join(f"{k}={v}" for k, v in shown.items() if v != "") or "(all jobs)"
            variants[key] = Variant(label=label, settings=shown, jobs=[])
        variants[key].jobs.append(job)
    return list(variants.values()), varying


def slugify(label: str) -> str:
    """A file-name part for a group label: "data=timing, data.task=msd" -> "data-timing_data.task-msd"."""
    if label == "(all jobs)":
        return "all"
    slug = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace(", ", "_"))).strip("_.").replace("=", "-")
    if len(slug) > 60:  # keep names short, but distinct: a hash of the whole label
        slug = slug[:50].rstrip("_.-") + "_" + hashlib.sha1(label.encode()).hexdigest()[:8]
    return slug or "group"


def split_groups(jobs: Sequence[Job], group_by: Sequence[str] = DATA_KEYS) -> list[Group]:
    """Split jobs into groups by their overrides whose key matches `group_by` (a key or a prefix of
    dotted keys: "data" matches `data=...` and `data.task=...`), in the sweep's order; each group's jobs
    are then split into arms by everything else but the seed."""
    by_key: dict[tuple, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(group_overrides(job, group_by), []).append(job)
    groups, slugs = [], set()
    for key, members in by_key.items():
        settings = dict(split_override(o) for o in key)
        label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "(all jobs)"
        arms, varying = group_jobs(members, exclude=group_by)
        slug, n = slugify(label), 2
        while slug in slugs:  # two labels that differ only in characters the slug drops
            slug, n = f"{slugify(label)}_{n}", n + 1
        slugs.add(slug)
        groups.append(Group(label=label, settings=settings, jobs=members, arms=arms, varying=varying, slug=slug))
    return groups


# --- statistics -------------------------------------------------------------------------------


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """95% confidence interval of the mean: mean ± t_{0.975, n-1} · s / √n (Student t); NaN below 2 values."""
    if len(values) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    mean, s = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf(0.975, len(values) - 1)) * s / math.sqrt(len(values))
    return mean - half, mean + half


def metric_stats(values: Sequence[float], mode: str) -> dict[str, float]:
    """n, mean, sample std, 95% CI of the mean (NaN below 2 values) and best of an arm's per-seed values."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not valid; allowed values: 'min', 'max'")
    nan = float("nan")
    low, high = ci95(values)
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else nan,
        "std": statistics.stdev(values) if len(values) > 1 else nan,
        "ci_low": low,
        "ci_high": high,
        "best": (min(values) if mode == "min" else max(values)) if values else nan,
    }


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, str]:
    """Two-sided Welch t-test p-value (the test Greff et al. 2017 use against vanilla) and, when it is
    NaN, why: fewer than 2 values in an arm, or both arms without variance (t is 0/0 or ±inf/undefined
    df; any number printed there would be made up)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), P_TOO_FEW
    if len(set(a)) == 1 and len(set(b)) == 1:
        return float("nan"), P_ZERO_VARIANCE
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # scipy warns on near-identical data; the p it returns is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return p, "" if math.isfinite(p) else P_UNDEFINED


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    return welch(a, b)[0]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values over the finite entries (the comparisons that could be made); NaN stays NaN."""
    finite = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    adjusted = [float("nan")] * len(pvalues)
    if finite:
        from statsmodels.stats.multitest import multipletests

        for i, p in zip(finite, multipletests([pvalues[i] for i in finite], method="holm")[1]):
            adjusted[i] = float(p)
    return adjusted


@dataclass
class Comparison:
    """The tests of a group's arms against its reference arm for one metric."""

    p: dict[str, float] = field(default_factory=dict)  # arm label -> Welch p (NaN: not computed)
    p_holm: dict[str, float] = field(default_factory=dict)
    why_missing: dict[str, str] = field(default_factory=dict)  # arm label -> P_* reason when p is NaN
    k: int = 0  # comparisons that gave a p-value: Holm's family size

    def significant(self, label: str, alpha: float = 0.05) -> bool:
        p = self.p_holm.get(label, float("nan"))
        return math.isfinite(p) and p < alpha


def compare(group: Group, metric: str) -> Comparison:
    """Welch tests of every non-reference arm of `group` against its reference, Holm-corrected over the k tests."""
    return compare_arms(group.arms, group.reference, metric)


def compare_arms(arms: Sequence[Variant], ref: Optional[Variant], metric: str) -> Comparison:
    result = Comparison()
    if ref is None:
        return result
    others = [a for a in arms if a is not ref]
    tests = [welch(a.values(metric), ref.values(metric)) for a in others]
    adjusted = holm([p for p, _ in tests])
    for arm, (p, why), p_adj in zip(others, tests, adjusted):
        result.p[arm.label], result.p_holm[arm.label] = p, p_adj
        if why:
            result.why_missing[arm.label] = why
    result.k = sum(math.isfinite(p) for p, _ in tests)
    return result


# --- learning speed ---------------------------------------------------------------------------


def epochs_to_threshold(points: Sequence[tuple[int, float]], threshold: float, mode: str) -> Optional[int]:
    """Epochs trained until the metric first reached `threshold` (>= for mode max, <= for min), counted
    from 1 (history epochs are 0-based); None when it never did within the run."""
    for epoch, value in sorted(points):
        if (value >= threshold) if mode == "max" else (value <= threshold):
            return epoch + 1
    return None


def median_epochs(epochs: Sequence[Optional[int]]) -> Optional[float]:
    """Median over seeds counting "never" (None) as later than any epoch: None when at least half the
    seeds never reached the threshold (an even count's two middle values then include a never)."""
    if not epochs:
        return None
    ordered = sorted(math.inf if e is None else e for e in epochs)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return None if math.isinf(median) else median


def learning_speed(arm: Variant, metric: str, threshold: float, mode: str) -> list[tuple[Optional[int], Optional[int]]]:
    """(seed, epochs until `metric` reached `threshold` or None) per completed job whose history has it."""
    done = sorted((j for j in arm.jobs if j.status == COMPLETED and j.history.get(metric)), key=_seed_order)
    return [(j.seed, epochs_to_threshold(j.history[metric], threshold, mode)) for j in done]


def history_metrics(jobs: Sequence[Job]) -> list[str]:
    """The metrics in the completed jobs' per-epoch histories."""
    return sorted({m for j in jobs if j.status == COMPLETED for m, pts in j.history.items() if pts})


# --- the reference arm ------------------------------------------------------------------------


def default_reference(arms: Sequence[Variant]) -> tuple[Optional[Variant], str]:
    """Greff et al.'s baseline: the arm labelled vanilla; else the peephole-free arm (Gers et al.'s
    comparison); else none. Returns the arm, or None and why."""
    for needle in ("vanilla", "peephole=none"):
        matches = [a for a in arms if needle in a.label]
        if len(matches) == 1:
            return matches[0], ""
        if len(matches) > 1:
            return None, f"{len(matches)} arms contain {needle!r}; choose one with --reference"
    return None, "no arm is labelled vanilla or peephole=none; choose one with --reference"


def assign_references(groups: Sequence[Group], reference: Optional[str] = None) -> None:
    """Set each group's reference arm: the one whose label contains `reference` (it must match exactly
    one arm in every group where it matches any, and some arm somewhere), else the default rule."""
    if reference is None:
        for g in groups:
            g.reference, g.reference_note = default_reference(g.arms)
        return
    matched = False
    for g in groups:
        matches = [a for a in g.arms if reference in a.label]
        if len(matches) > 1:
            labels = ", ".join(repr(a.label) for a in matches)
            raise ValueError(f"reference {reference!r} matches {len(matches)} arms in group {g.label!r} ({labels}); "
                             "it must match exactly one")
        g.reference = matches[0] if matches else None
        g.reference_note = "" if matches else f"no arm matches --reference {reference!r}"
        matched |= bool(matches)
    if not matched:
        labels = ", ".join(sorted({repr(a.label) for g in groups for a in g.arms}))
        raise ValueError(f"reference {reference!r} matches no arm; it must match one of: {labels}")


def find_reference(variants: Sequence[Variant], reference: Optional[str]) -> Optional[Variant]:
    """The reference arm among `variants` (one group's arms); see `assign_references`."""
    g = Group(label="", settings={}, jobs=[], arms=list(variants), varying=[])
    assign_references([g], reference)
    return g.reference


# --- the table ----------------------------------------------------------------------------------


@dataclass
class Speed:
    metric: str
    threshold: float
    mode: str

    @property
    def criterion(self) -> str:
        return f"{self.metric} {'>=' if self.mode == 'max' else '<='} {self.threshold:g}"


def summarize(
    jobs: Sequence[Job],
    metrics: Sequence[str],
    modes: dict[str, str],
    reference: Optional[str] = None,
    group_by: Sequence[str] = DATA_KEYS,
    speed: Optional[Speed] = None,
) -> tuple[pd.DataFrame, list[Group]]:
    """One row per (group, arm): the group's and arm's settings, job/failed counts, per-metric
    statistics with the Welch/Holm p-values against the group's reference arm, and learning speed."""
    groups = split_groups(jobs, group_by)
    assign_references(groups, reference)
    rows = []
    for g in groups:
        g.comparisons = {m: compare(g, m) for m in metrics}
        if speed is not None and speed.metric in history_metrics(g.jobs):
            g.speed = {a.label: learning_speed(a, speed.metric, speed.threshold, speed.mode) for a in g.arms}
        for a in g.arms:
            row: dict = {"group": g.label, **g.settings, "arm": a.label, **a.settings,
                         "reference": a is g.reference, "jobs": len(a.jobs), "failed": a.n_failed}
            for m in metrics:
                for stat, value in metric_stats(a.values(m), modes[m]).items():
                    row[f"{m}_{stat}"] = value
                row[f"{m}_values"] = ", ".join(repr(v) for _, v in a.seed_values(m))
                row[f"{m}_p"] = g.comparisons[m].p.get(a.label, float("nan"))
                row[f"{m}_p_holm"] = g.comparisons[m].p_holm.get(a.label, float("nan"))
            if g.speed:
                epochs = [e for _, e in g.speed[a.label]]
                median = median_epochs(epochs)
                row["speed_criterion"] = speed.criterion
                row["speed_epochs"] = ", ".join("never" if e is None else str(e) for e in epochs)
                row["speed_median"] = "never" if median is None and epochs else median
                row["speed_reached"] = sum(e is not None for e in epochs)
                row["speed_n"] = len(epochs)
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("speed_reached", "speed_n"):  # counts, also where a group has no histories (NA)
        if column in table:
            table[column] = table[column].astype("Int64")
    return table, groups


def available_metrics(jobs: Sequence[Job]) -> list[str]:
    return sorted({m for j in jobs if j.status == COMPLETED for m in j.metrics})


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """All final test metrics the completed jobs report (falling back to val, then to any)."""
    names = available_metrics(jobs)
    for prefix in ("test/", "val/"):
        chosen = [m for m in names if m.startswith(prefix)]
        if chosen:
            return chosen
    return names
