"""Group a sweep's jobs into variants (overrides minus seed) and aggregate metrics across seeds."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd

from peephole_lstm.sweeps.jobs import COMPLETED, Job, split_override, variant_overrides

# Metrics where larger is better; every other metric (losses, errors, bpc, ppl) is minimised.
_MAXIMISED = ("acc", "accuracy", "f1", "auroc", "r2")


def default_mode(metric: str) -> str:
    return "max" if metric.rsplit("/", 1)[-1].lower() in _MAXIMISED else "min"


@dataclass
class Variant:
    label: str  # the overrides that differ between variants, e.g. "model.peephole=full"
    settings: dict[str, str]  # the same as key -> value, one CSV column per key
    jobs: list[Job]

    def values(self, metric: str) -> list[float]:
        """The finite values of `metric` over the variant's completed jobs (one per seed)."""
        return [
            j.metrics[metric]
            for j in self.jobs
            if j.status == COMPLETED and metric in j.metrics and math.isfinite(j.metrics[metric])
        ]

    @property
    def n_failed(self) -> int:
        return sum(j.status != COMPLETED for j in self.jobs)


def group_jobs(jobs: Sequence[Job]) -> tuple[list[Variant], list[str]]:
    """Group jobs by their overrides minus `seed`, keeping the sweep's order of first appearance.

    Returns the variants and the override keys that vary between them. Keys set identically in
    every job (e.g. `trainer.max_epochs=1` on the command line) are left out of the labels.
    """
    settings = [dict(split_override(o) for o in variant_overrides(j)) for j in jobs]
    all_keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in all_keys if len({s.get(k) for s in settings}) > 1]
    variants: dict[tuple, Variant] = {}
    for job, s in zip(jobs, settings):
        key = variant_overrides(job)
        if key not in variants:
            shown = {k: s.get(k, "") for k in varying}
            label = ", ".join(f"{k}={v}" for k, v in shown.items() if v != "") or "(all jobs)"
            variants[key] = Variant(label=label, settings=shown, jobs=[])
        variants[key].jobs.append(job)
    return list(variants.values()), varying


def metric_stats(values: Sequence[float], mode: str) -> dict[str, float]:
    """n, mean, sample std (NaN below 2 values) and best of one variant's per-seed values."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not valid; allowed values: 'min', 'max'")
    nan = float("nan")
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else nan,
        "std": statistics.stdev(values) if len(values) > 1 else nan,
        "best": (min(values) if mode == "min" else max(values)) if values else nan,
    }


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value, the test Greff et al. (2017) use against vanilla."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def find_reference(variants: Sequence[Variant], reference: Optional[str]) -> Optional[Variant]:
    """The variant others are compared with: the one whose label contains `reference`.

    Without `reference`, a variant labelled vanilla (Greff et al.'s baseline) if there is one.
    """
    if reference is None:
        vanilla = [v for v in variants if "vanilla" in v.label]
        return vanilla[0] if len(vanilla) == 1 else None
    matches = [v for v in variants if reference in v.label]
    if len(matches) != 1:
        labels = ", ".join(repr(v.label) for v in variants)
        raise ValueError(f"reference {reference!r} matches {len(matches)} variants; it must match one of: {labels}")
    return matches[0]


def summarize(
    jobs: Sequence[Job],
    metrics: Sequence[str],
    modes: dict[str, str],
    reference: Optional[str] = None,
) -> tuple[pd.DataFrame, list[Variant], list[str]]:
    """One row per variant: its varying settings, job/failed counts and per-metric statistics."""
    variants, varying = group_jobs(jobs)
    ref = find_reference(variants, reference)
    rows = []
    for v in variants:
        row: dict = {"variant": v.label, **v.settings, "jobs": len(v.jobs), "failed": v.n_failed}
        for m in metrics:
            for stat, value in metric_stats(v.values(m), modes[m]).items():
                row[f"{m}_{stat}"] = value
            if ref is not None:
                row[f"{m}_p_vs_ref"] = float("nan") if v is ref else welch_p(v.values(m), ref.values(m))
        rows.append(row)
    return pd.DataFrame(rows), variants, varying


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
