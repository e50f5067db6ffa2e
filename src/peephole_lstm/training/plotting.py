"""Prediction-vs-truth figures (matplotlib Agg: no display needed)."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def forecast_figure(truth: np.ndarray, pred: np.ndarray, names: Sequence[str], title: str):
    """truth, pred: (N, horizon, targets) over consecutive test windows; plots the first and last
    horizon steps of each target (one panel per target)."""
    n, horizon, targets = truth.shape
    fig, axes = plt.subplots(targets, 1, figsize=(10, 2.8 * targets), squeeze=False, sharex=True)
    steps = [0] if horizon == 1 else [0, horizon - 1]
    for k, ax in enumerate(axes[:, 0]):
        ax.plot(np.arange(n), truth[:, 0, k], color="black", lw=1.2, label="truth")
        for s in steps:
            ax.plot(np.arange(n) + s, pred[:, s, k], lw=1.0, alpha=0.85, label=f"prediction, {s + 1} step(s) ahead")
        ax.set_ylabel(names[k] if k < len(names) else f"target {k}")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("test window")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def sequence_figure(truth: np.ndarray, pred: np.ndarray, names: Sequence[str], title: str):
    """truth, pred: (sequences, T, targets); one panel per example sequence."""
    count, _, targets = truth.shape
    fig, axes = plt.subplots(count, 1, figsize=(10, 2.5 * count), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        for k in range(targets):
            name = names[k] if k < len(names) else f"target {k}"
            ax.plot(truth[i, :, k], color="black", lw=1.2, label=f"{name} truth")
            ax.plot(pred[i, :, k], lw=1.0, alpha=0.85, label=f"{name} prediction")
        ax.set_ylabel(f"sequence {i}")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
