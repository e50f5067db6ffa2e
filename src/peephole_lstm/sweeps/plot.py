"""Box plots of one metric per variant, in the style of Greff et al. (2017), Figs. 3-4.

One box per variant (quartiles, whiskers at 1.5 IQR), every seed drawn as a point on top; with a
reference variant, its box is grey and boxes that differ from it significantly (Welch t-test,
p < 0.05) are coloured, as in the paper.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # report generation runs headless (clusters, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from peephole_lstm.sweeps.aggregate import Variant, welch_p  # noqa: E402

_PLAIN, _REF, _SIGNIFICANT = "#9ecae1", "#bdbdbd", "#fc9272"


def box_plot(
    variants: Sequence[Variant],
    metric: str,
    mode: str,
    path: str | Path,
    reference: Optional[Variant] = None,
    title: Optional[str] = None,
) -> Path:
    path = Path(path)
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
        for patch, i in zip(boxes["boxes"], filled):
            patch.set_facecolor(_box_colour(variants[i], reference, metric))
    rng = np.random.default_rng(0)  # fixed jitter: the same sweep gives the same figure
    for pos, values in zip(positions, data):
        jitter = rng.uniform(-0.15, 0.15, size=len(values))
        ax.scatter(pos + jitter, values, s=14, color="black", alpha=0.7, zorder=3)
    # With one varying key (the usual ablation) its name goes on the axis and the ticks show values.
    keys = list(variants[0].settings) if variants else []
    names = [next(iter(v.settings.values())) for v in variants] if len(keys) == 1 else [v.label for v in variants]
    labels = []
    for v, name, values in zip(variants, names, data):
        failed = f"\n({v.n_failed} failed)" if v.n_failed else ""
        labels.append(f"{name}\nn={len(values)}{failed}")
    crowded = max(map(len, names), default=0) * len(names) > 8 * width
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    if len(keys) == 1:
        ax.set_xlabel(keys[0])
    ax.set_xlim(0.4, len(variants) + 0.6)
    better = "lower" if mode == "min" else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(title or f"{metric} per variant across seeds")
    ax.grid(axis="y", alpha=0.3)
    if reference is not None:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=_REF, label=f"reference: {reference.label}"),
                           Patch(color=_SIGNIFICANT, label="differs from it, Welch p < 0.05")], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _box_colour(variant: Variant, reference: Optional[Variant], metric: str) -> str:
    if reference is None:
        return _PLAIN
    if variant is reference:
        return _REF
    p = welch_p(variant.values(metric), reference.values(metric))
    return _SIGNIFICANT if not math.isnan(p) and p < 0.05 else _PLAIN
