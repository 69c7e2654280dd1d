"""Statistics shared by evaluation and the benchmarks: the percentile bootstrap and the
normalized score.

numpy only (no torch), so a benchmark or a light tool imports it without the training stack.
Every interval is seeded: the same values give the same numbers on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the default confidence level of every interval
LEVEL = 0.95


def tail_percentiles(level: float = LEVEL) -> tuple[float, float]:
    """The percentiles bounding a central ``level`` interval: ``(2.5, 97.5)`` for 0.95.

    Rounded to 1e-9 percentage points, so 0.95 gives exactly 2.5 and 97.5 (``1 - 0.95`` is
    not exactly 0.05 in floating point).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    tail = round(50.0 * (1.0 - level), 9)
    return tail, 100.0 - tail


def bootstrap_ci(
    values: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean (95% by default).

    ``n_boot`` resamples of the values with replacement, drawn from
    ``numpy.random.default_rng(seed)``. No values: NaNs; one value: that value three times.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = tail_percentiles(level)
    return float(v.mean()), float(np.percentile(means, lo)), float(np.percentile(means, hi))


def _interval(point: float, boots: np.ndarray, level: float) -> tuple[float, float, float]:
    """``point`` and the central ``level`` percentile interval of the finite ``boots``
    (NaN bounds when none is finite: every resample had no gap to divide by)."""
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return point, math.nan, math.nan
    lo, hi = tail_percentiles(level)
    return point, float(np.percentile(boots, lo)), float(np.percentile(boots, hi))


def normalized(r: float, r_random: float, r_oracle: float) -> float:
    """``(R - R_random) / (R_oracle - R_random)``; NaN where the oracle is no better than random."""
    gap = r_oracle - r_random
    return (r - r_random) / gap if gap > 1e-6 else math.nan


def normalized_ci(
    returns: Sequence[float],
    rand: Sequence[float],
    oracle: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Normalized score of a set of (task, seed) results, with a bootstrap interval.

    ``(mean R - mean R_random) / (mean R_oracle - mean R_random)`` over the pairs: pooling
    before dividing keeps a task on which the oracle is barely better than random from
    dominating (per-task ratios explode there). The interval resamples the pairs.
    """
    r, rr, ro = (np.asarray(x, np.float64) for x in (returns, rand, oracle))
    if r.size == 0:
        return math.nan, math.nan, math.nan
    point = normalized(r.mean(), rr.mean(), ro.mean())
    if r.size == 1 or math.isnan(point):
        return point, point, point
    idx = np.random.default_rng(seed).integers(0, r.size, size=(n_boot, r.size))
    gap = ro[idx].mean(1) - rr[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.where(gap > 1e-6, (r[idx].mean(1) - rr[idx].mean(1)) / gap, np.nan)
    return _interval(point, boots, level)


def hierarchical_indices(
    n_seeds: int, n_tasks: int, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The resamples of a two-level bootstrap over a (seed, task) grid: ``n_boot`` draws of
    ``n_seeds`` training seeds with replacement, then, within each drawn seed, ``n_tasks``
    robots with replacement. Returns ``(seeds, tasks)`` of shapes ``(n_boot, n_seeds, 1)`` and
    ``(n_boot, n_seeds, n_tasks)``: ``values[seeds, tasks]`` is one resample of a
    ``(n_seeds, n_tasks)`` array per draw."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds, 1))
    tasks = rng.integers(0, n_tasks, size=(n_boot, n_seeds, n_tasks))
    return seeds, tasks


def hierarchical_ci(
    values: Sequence[Sequence[float]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Mean and interval of a ``(seeds, tasks)`` grid of returns by the hierarchical
    bootstrap (:func:`hierarchical_indices`: resample training seeds, then robots within
    each seed), so the interval carries the spread between training seeds as well as
    between robots. The point is the mean over all pairs. One seed: :func:`bootstrap_ci`
    of its tasks (the same numbers)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be a (seeds, tasks) grid, got shape {v.shape}")
    if v.shape[0] == 1 or v.size == 0:
        return bootstrap_ci(v.ravel(), n_boot, seed, level)
    seeds, tasks = hierarchical_indices(*v.shape, n_boot=n_boot, seed=seed)
    means = v[seeds, tasks].mean(axis=(1, 2))
    lo, hi = tail_percentiles(level)
    return float(v.mean()), float(np.percentile(means, lo)), float(np.percentile(means, hi))


def hierarchical_normalized_ci(
    returns: Sequence[Sequence[float]],
    rand: Sequence[float],
    oracle: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """:func:`normalized_ci` of a ``(seeds, tasks)`` grid by the hierarchical bootstrap:
    ``rand`` and ``oracle`` are per task (the same robots under every seed), each resample
    divides the pooled means of the robots it drew. One seed: :func:`normalized_ci` of its
    tasks (the same numbers)."""
    r = np.asarray(returns, dtype=np.float64)
    rr, ro = (np.asarray(x, np.float64) for x in (rand, oracle))
    if r.ndim != 2 or r.shape[1] != rr.size or rr.shape != ro.shape:
        raise ValueError(
            f"returns must be a (seeds, tasks) grid with one random and one oracle return per "
            f"task, got shapes {r.shape}, {rr.shape}, {ro.shape}"
        )
    if r.shape[0] == 1 or r.size == 0:
        return normalized_ci(r.ravel(), rr, ro, n_boot, seed, level)
    point = normalized(r.mean(), rr.mean(), ro.mean())
    if math.isnan(point):
        return point, point, point
    seeds, tasks = hierarchical_indices(*r.shape, n_boot=n_boot, seed=seed)
    gap = ro[tasks].mean(axis=(1, 2)) - rr[tasks].mean(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.where(
            gap > 1e-6,
            (r[seeds, tasks].mean(axis=(1, 2)) - rr[tasks].mean(axis=(1, 2))) / gap,
            np.nan,
        )
    return _interval(point, boots, level)


def gap_closed_ci(
    returns: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]],
    bound: Sequence[Sequence[float]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """The fraction of the baseline -> bound gap a method closes,
    ``(mean R - mean R_base) / (mean R_bound - mean R_base)``, with a hierarchical interval.

    Each argument is a ``(seeds, tasks)`` grid over the same robots (its own training seeds:
    the method's, the baseline's and the bound's seeds are resampled independently, robots
    jointly, since every method ran on the same robots). NaN where the bound does not exceed
    the baseline."""
    grids = [np.asarray(x, dtype=np.float64) for x in (returns, baseline, bound)]
    if any(g.ndim != 2 for g in grids) or len({g.shape[1] for g in grids}) != 1:
        raise ValueError(
            "returns, baseline and bound must be (seeds, tasks) grids over the same tasks, got "
            f"shapes {[g.shape for g in grids]}"
        )
    r, b, u = grids

    def closed(r_mean: np.ndarray, b_mean: np.ndarray, u_mean: np.ndarray) -> np.ndarray:
        gap = u_mean - b_mean
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 1e-6, (r_mean - b_mean) / gap, np.nan)

    point = float(closed(np.array(r.mean()), np.array(b.mean()), np.array(u.mean())))
    if math.isnan(point):
        return point, point, point
    rng = np.random.default_rng(seed)
    n_tasks = r.shape[1]
    tasks = rng.integers(0, n_tasks, size=(n_boot, 1, n_tasks))  # the same robots for all three

    def resampled(g: np.ndarray) -> np.ndarray:
        seeds = rng.integers(0, g.shape[0], size=(n_boot, g.shape[0], 1))
        return g[seeds, tasks].mean(axis=(1, 2))

    boots = closed(resampled(r), resampled(b), resampled(u))
    return _interval(point, boots, level)
