"""The report's figures, one set per dataset group.

- `box_plot`: one metric per arm in the style of Greff et al. (2017), Figs. 3-4: one box per arm
  (quartiles, whiskers at 1.5 IQR), every seed drawn as a point on top; with a reference arm, its box
  is grey and arms that differ from it significantly (Welch t-test, Holm-adjusted p < 0.05) are coloured.
- `curve_plot`: a per-epoch metric (from the jobs' history.csv) against epochs trained, the median over
  seeds as a line and the interquartile range as a band, one line per arm.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # report generation runs headless (clusters, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from peephole_lstm.sweeps.aggregate import Comparison, Variant, compare_arms  # noqa: E402
from peephole_lstm.sweeps.jobs import COMPLETED  # noqa: E402

_PLAIN, _REF, _SIGNIFICANT, _SIGNIFICANT_EDGE = "#9ecae1", "#bdbdbd", "#fc9272", "#de2d26"


def _short_names(variants: Sequence[Variant]) -> tuple[list[str], Optional[str]]:
    # With one varying key (the usual ablation) its name goes on the axis and the ticks show values.
    keys = list(variants[0].settings) if variants else []
    if len(keys) == 1:
        return [next(iter(v.settings.values())) for v in variants], keys[0]
    return [v.label for v in variants], None


def box_plot(
    variants: Sequence[Variant],
    metric: str,
    mode: str,
    path: str | Path,
    reference: Optional[Variant] = None,
    title: Optional[str] = None,
    comparison: Optional[Comparison] = None,
) -> Path:
    path = Path(path)
    if comparison is None:
        comparison = compare_arms(variants, reference, metric)
    data = [v.values(metric) for v in variants]
    width = max(4.0, 0.9 * len(variants) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 4.5))
    positions = np.arange(1, len(variants) + 1)
    # matplotlib draws nothing sensible for an empty box; variants without values keep their tick.
    filled = [i for i, d in enumerate(data) if d]
    if filled:
        boxes = ax.boxplot(
            [data[i] for i in filled],
            positions=positions[filled],
            widths=0.6,
            patch_artist=True,
            showfliers=False,  # every value is drawn as a point below, outliers included
            medianprops={"color": "black"},
        )
        for patch, median, i in zip(boxes["boxes"], boxes["medians"], filled):
            v = variants[i]
            significant = v is not reference and comparison.significant(v.label)
            patch.set_facecolor(_REF if v is reference else _SIGNIFICANT if significant else _PLAIN)
            if significant:  # a box without spread (all seeds equal) is only a line: colour that too
                patch.set_edgecolor(_SIGNIFICANT_EDGE)
                median.set_color(_SIGNIFICANT_EDGE)
    rng = np.random.default_rng(0)  # fixed jitter: the same sweep gives the same figure
    for pos, values in zip(positions, data):
        jitter = rng.uniform(-0.15, 0.15, size=len(values))
        ax.scatter(pos + jitter, values, s=14, color="black", alpha=0.7, zorder=3)
    names, key = _short_names(variants)
    labels = []
    for v, name, values in zip(variants, names, data):
        failed = f"\n({v.n_failed} failed)" if v.n_failed else ""
        labels.append(f"{name}\nn={len(values)}{failed}")
    crowded = max(map(len, names), default=0) * len(names) > 8 * width
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    if key:
        ax.set_xlabel(key)
    ax.set_xlim(0.4, len(variants) + 0.6)
    better = "lower" if mode == "min" else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(title or f"{metric} per arm across seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if reference is not None:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=_REF, label=f"reference: {reference.label}"),
                           Patch(facecolor=_SIGNIFICANT, edgecolor=_SIGNIFICANT_EDGE,
                                 label="differs from it: Welch p < 0.05, Holm-adjusted")],
                  fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, frameon=False)
    return _save(fig, path)


def seed_curves(variant: Variant, metric: str) -> list[dict[int, float]]:
    """{epoch: value} of `metric` per completed job of the arm, finite values only."""
    return [
        {e: v for e, v in j.history[metric] if math.isfinite(v)}
        for j in variant.jobs
        if j.status == COMPLETED and j.history.get(metric)
    ]


def curve_band(curves: Sequence[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs (0-based) and the median, 25th and 75th percentile across seeds at each; a seed that has
    no value at an epoch (stopped earlier) is left out there."""
    epochs = np.array(sorted({e for c in curves for e in c}), dtype=int)
    grid = np.array([[c.get(e, np.nan) for e in epochs] for c in curves], dtype=float).reshape(len(curves), len(epochs))
    if not epochs.size:
        return epochs, *(np.empty(0),) * 3
    q25, median, q75 = np.nanpercentile(grid, [25, 50, 75], axis=0)
    return epochs, median, q25, q75


def curve_plot(
    variants: Sequence[Variant],
    metric: str,
    mode: str,
    path: str | Path,
    reference: Optional[Variant] = None,
    title: Optional[str] = None,
) -> Path:
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    colours = plt.get_cmap("tab10").colors
    drawn = 0
    for i, v in enumerate(variants):
        curves = seed_curves(v, metric)
        if not curves:
            continue
        epochs, median, q25, q75 = curve_band(curves)
        colour = "black" if v is reference else colours[drawn % len(colours)]
        x = epochs + 1  # epochs trained: the value after the first epoch is at 1
        name = f"{v.label} (reference)" if v is reference else v.label
        ax.plot(x, median, color=colour, lw=1.8, label=f"{name}, n={len(curves)}",
                ls="--" if v is reference else "-", marker="." if len(x) < 30 else None)
        ax.fill_between(x, q25, q75, color=colour, alpha=0.18, lw=0)
        drawn += 1
    better = "lower" if mode == "min" else "higher"
    ax.set_xlabel("epochs trained")
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(title or f"{metric}: median and interquartile range across seeds", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed below the axes
    plt.close(fig)
    return path
