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
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return point, math.nan, math.nan
    lo, hi = tail_percentiles(level)
    return point, float(np.percentile(boots, lo)), float(np.percentile(boots, hi))
