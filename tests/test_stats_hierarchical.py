"""The hierarchical bootstrap (training seeds, then robots) and the gap-closed fraction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robometa.stats import (
    bootstrap_ci,
    gap_closed_ci,
    hierarchical_ci,
    hierarchical_normalized_ci,
    normalized_ci,
)


def test_one_seed_gives_the_task_bootstrap() -> None:
    values = np.random.default_rng(0).normal(100, 20, size=12)
    assert hierarchical_ci([values]) == bootstrap_ci(values)
    rand, oracle = np.full(12, 10.0), np.full(12, 150.0)
    assert hierarchical_normalized_ci([values], rand, oracle) == normalized_ci(values, rand, oracle)


def test_seed_variance_widens_the_interval() -> None:
    # Two seeds that disagree by 100 on every robot: pooling the pairs as independent hides
    # that the second seed may as well have been a copy of the first.
    rng = np.random.default_rng(1)
    grid = np.stack([rng.normal(180, 5, 10), rng.normal(80, 5, 10)])
    mean, lo, hi = hierarchical_ci(grid)
    pooled = bootstrap_ci(grid.ravel())
    assert mean == pytest.approx(grid.mean())
    assert lo < 90 and hi > 170  # the seed draws reach both seeds' means
    assert (hi - lo) > 2 * (pooled[2] - pooled[1])
    # seeds that agree: close to the pooled interval
    same = np.stack([grid[0], grid[0] + rng.normal(0, 1, 10)])
    width = np.subtract(*hierarchical_ci(same)[2:0:-1])
    pooled_width = np.subtract(*bootstrap_ci(same.ravel())[2:0:-1])
    assert width < 1.6 * pooled_width


def test_normalized_point_and_interval() -> None:
    grid = [[110.0, 90.0, 100.0], [60.0, 40.0, 50.0]]
    rand, oracle = [0.0, 0.0, 0.0], [200.0, 200.0, 200.0]
    mean, lo, hi = hierarchical_normalized_ci(grid, rand, oracle)
    assert mean == pytest.approx(75.0 / 200.0)
    assert lo <= mean <= hi
    assert lo < 0.3 and hi > 0.45  # the seed draw: all-first or all-second seed
    with pytest.raises(ValueError, match="one random and one oracle return per task"):
        hierarchical_normalized_ci(grid, [0.0, 0.0], oracle)


def test_gap_closed() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(50, 5, size=(5, 20))
    bound = rng.normal(150, 5, size=(2, 20))
    assert gap_closed_ci(bound, base, bound)[0] == pytest.approx(1.0)
    assert gap_closed_ci(base, base, bound)[0] == pytest.approx(0.0)
    half = (base[:1] + bound[:1]) / 2
    point, lo, hi = gap_closed_ci(half, base, bound)
    assert 0.4 < lo <= point <= hi < 0.6
    # no gap: NaN, said plainly rather than a division by ~0
    assert all(math.isnan(x) for x in gap_closed_ci(base, base, base))
    with pytest.raises(ValueError, match="same tasks"):
        gap_closed_ci(base[:, :5], base, bound)
