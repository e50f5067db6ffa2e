"""The chaotic Mackey-Glass series, integrated with RK4 and a history buffer, as a forecasting task."""
from __future__ import annotations

import math

import numpy as np

from peephole_lstm.data.base import check_int
from peephole_lstm.data.windowed import WindowedSeriesDataModule


def mackey_glass(
    length: int,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    n: float = 10.0,
    dt: float = 0.1,
    sample_step: float = 1.0,
    washout: int = 500,
    x0: float = 1.2,
    history_noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """``length`` samples, ``sample_step`` time units apart, of dx/dt = beta x(t-tau) / (1 + x(t-tau)^n) - gamma x(t).

    RK4 with step ``dt``; the delayed value at the half step is the mean of its two grid neighbours.
    The initial history is ``x0`` plus a seed-dependent uniform perturbation of size ``history_noise`` (so seeds give different
    trajectories of the same attractor); the first ``washout`` samples are discarded.
    """
    delay = round(tau / dt)
    sub = round(sample_step / dt)
    if not math.isclose(delay * dt, tau) or not math.isclose(sub * dt, sample_step):
        raise ValueError(f"tau={tau} and sample_step={sample_step} must be integer multiples of dt={dt}")
    rng = np.random.default_rng(seed)
    # x[i] is the value at time (i - delay) * dt; the first delay+1 entries are the history.
    x = (x0 + history_noise * rng.uniform(-1.0, 1.0, delay + 1)).tolist()

    def f(xt: float, xd: float) -> float:
        return beta * xd / (1.0 + xd**n) - gamma * xt

    for _ in range((washout + length) * sub):
        i = len(x) - 1
        xd0, xd1 = x[i - delay], x[i - delay + 1]
        xdh = 0.5 * (xd0 + xd1)
        xt = x[i]
        k1 = f(xt, xd0)
        k2 = f(xt + 0.5 * dt * k1, xdh)
        k3 = f(xt + 0.5 * dt * k2, xdh)
        k4 = f(xt + dt * k3, xd1)
        x.append(xt + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))
    samples = np.asarray(x[delay::sub], dtype=np.float64)  # samples[0] is time 0
    return samples[washout + 1 : washout + 1 + length]


class MackeyGlassDataModule(WindowedSeriesDataModule):
    """Forecast the Mackey-Glass series ``horizon`` samples ahead from the last ``window`` samples."""

    def __init__(
        self,
        length: int = 2000,
        tau: float = 17.0,
        beta: float = 0.2,
        gamma: float = 0.1,
        n: float = 10.0,
        dt: float = 0.1,
        sample_step: float = 1.0,
        washout: int = 500,
        window: int = 32,
        horizon: int = 1,
        stride: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            window=window,
            horizon=horizon,
            stride=stride,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self.length = check_int("length", length, 2)
        self.washout = check_int("washout", washout, 0)
        for name, value in (("tau", tau), ("dt", dt), ("sample_step", sample_step), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        for name, value in (("beta", beta), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if not math.isclose(round(tau / dt) * dt, tau) or not math.isclose(round(sample_step / dt) * dt, sample_step):
            raise ValueError(f"tau={tau} and sample_step={sample_step} must be integer multiples of dt={dt}")
        self.params = dict(tau=float(tau), beta=float(beta), gamma=float(gamma), n=float(n),
                           dt=float(dt), sample_step=float(sample_step), washout=washout)

    def _load(self) -> tuple[np.ndarray, list[str], list[str]]:
        series = mackey_glass(self.length, seed=self.seed, **self.params)
        return series[:, None], ["x"], ["x"]
