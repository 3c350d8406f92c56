"""The Halton search: trial i is point i of scipy's non-scrambled 2-D Halton sequence, log-uniform in (lr, wd)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import qmc

from medxfer.training.halton import LR_BOUNDS, WD_BOUNDS, SearchSpaceError, halton_point, halton_trial


def _reference(n: int, lr=LR_BOUNDS, wd=WD_BOUNDS) -> np.ndarray:
    """The first n (lr, wd) points, computed independently: one scipy draw, scaled in log space."""
    u = qmc.Halton(d=2, scramble=False).random(n)
    lo = np.log10([lr[0], wd[0]])
    hi = np.log10([lr[1], wd[1]])
    return 10 ** (lo + u * (hi - lo))


def test_point_0_is_the_lower_corner_and_point_1_the_first_halton_step():
    assert halton_trial(0) == (1e-4, 1e-6)
    lr, wd = halton_trial(1)  # Halton point 1 = (1/2, 1/3)
    assert math.isclose(lr, 1e-4 * 1000 ** 0.5, rel_tol=1e-12)
    assert math.isclose(wd, 1e-6 * 100 ** (1 / 3), rel_tol=1e-12)


def test_75_trials_match_scipy():
    ref = _reference(75)
    for i in range(75):
        lr, wd = halton_trial(i)
        assert math.isclose(lr, ref[i, 0], rel_tol=1e-12) and math.isclose(wd, ref[i, 1], rel_tol=1e-12), i
        assert LR_BOUNDS[0] <= lr < LR_BOUNDS[1] and WD_BOUNDS[0] <= wd < WD_BOUNDS[1]
    assert len({halton_trial(i) for i in range(75)}) == 75


def test_custom_bounds_and_equal_bounds():
    ref = _reference(5, lr=(1e-3, 1e-2), wd=(1e-5, 1e-3))
    for i in range(5):
        assert np.allclose(halton_trial(i, (1e-3, 1e-2), (1e-5, 1e-3)), ref[i], rtol=1e-12)
    assert halton_trial(3, (0.01, 0.01), WD_BOUNDS)[0] == 0.01  # a fixed lr: only wd is searched


def test_points_are_scipys_sequence():
    assert halton_point(0) == (0.0, 0.0)
    assert halton_point(5) == pytest.approx((0.625, 7 / 9), rel=1e-15)


@pytest.mark.parametrize("lr, wd, match", [
    ((1e-1, 1e-4), WD_BOUNDS, r"finetune\.lr_bounds=\[0\.1, 0\.0001\]: the bounds are inverted"),
    (LR_BOUNDS, (1e-4, 1e-6), r"finetune\.wd_bounds=.*inverted"),
    ((0.0, 1e-1), WD_BOUNDS, r"lr_bounds.*> 0"),
    ((-1e-4, 1e-1), WD_BOUNDS, r"lr_bounds.*> 0"),
    (LR_BOUNDS, (1e-6, float("inf")), r"wd_bounds.*finite"),
    ((1e-4,), WD_BOUNDS, r"lr_bounds.*two numbers"),
])
def test_bad_bounds_are_named(lr, wd, match):
    with pytest.raises(SearchSpaceError, match=match):
        halton_trial(0, lr, wd)


@pytest.mark.parametrize("trial, match", [
    (-1, r"trial=-1: trials are numbered from 0"),
    (1.5, r"trial=1\.5: expected a non-negative integer"),
    ("3", r"trial='3': expected a non-negative integer"),
    (True, r"trial=True"),
])
def test_bad_trial_is_named(trial, match):
    with pytest.raises(SearchSpaceError, match=match):
        halton_trial(trial)
