"""Successive halving (medxfer.training.halving): which points each rung trains, the selection rule it shares
with the analysis, and what it costs against the grid search over the same points."""

from __future__ import annotations

import math

import pytest

from medxfer.analysis.selection import trial_order
from medxfer.training.halving import Halving, HalvingError, RungResult, geometric_budgets, halving


def _run(search: Halving, curve, mode: str = "max"):
    """Drive a search rung by rung as the fine-tune stage would: train each point of a rung to the rung's budget
    (``curve(point, epochs)`` -> (metric, val_loss)), record the result, go up. Returns the results and the
    epochs trained per point."""
    results: dict[tuple[int, int], RungResult] = {}
    trained: dict[int, int] = {}
    for rung, budget in enumerate(search.budgets):
        for point in search.rung_points(rung, results, mode):
            assert trained.get(point, 0) == (search.budgets[rung - 1] if rung else 0), "resumes where it stopped"
            trained[point] = budget
            results[point, rung] = RungResult(*curve(point, budget))
    return results, trained


def test_geometric_budgets():
    assert geometric_budgets(27, 3, 3) == (3, 9, 27)
    assert geometric_budgets(27, 3) == (1, 3, 9, 27)
    assert geometric_budgets(10, 3, 1) == (1, 3, 10)
    assert geometric_budgets(4, 2, 1) == (1, 2, 4)
    assert geometric_budgets(2, 3, 1) == (2,)   # 2/3 epoch is below min_epochs: one rung
    assert geometric_budgets(1, 3, 1) == (1,)


def test_rung_sizes_and_compute_of_the_papers_search():
    search = halving(range(75), max_epochs=27, eta=3, min_epochs=3)
    assert search.budgets == (3, 9, 27)
    assert [search.size(r) for r in range(search.rungs)] == [75, 25, 8]
    assert search.epochs() == 75 * 3 + 25 * 6 + 8 * 18 == 519
    assert search.grid_epochs() == 75 * 27
    assert search.epochs() / search.grid_epochs() < 0.26


def test_planted_best_point_is_selected_and_losers_stop_early():
    """Point 5 learns fastest and ends best; the others' curves are ordered by a fixed quality. Halving must keep
    the best third at each rung, select point 5, and train only the survivors further."""
    quality = {p: q for p, q in zip(range(9), [0.50, 0.62, 0.55, 0.70, 0.58, 0.90, 0.66, 0.52, 0.74])}

    def curve(point, epochs):
        acc = 0.25 + (quality[point] - 0.25) * (1 - math.exp(-epochs / 3))
        return acc, 1.5 - acc

    search = halving(range(9), max_epochs=9, eta=3)
    results, trained = _run(search, curve)
    assert search.rung_points(1, results) == [5, 8, 3]
    assert search.rung_points(2, results) == [5]
    assert search.selected(results) == 5
    assert trained == {0: 1, 1: 1, 2: 1, 3: 3, 4: 1, 5: 9, 6: 1, 7: 1, 8: 3}
    assert sum(trained.values()) == search.epochs() == 9 * 1 + 3 * 2 + 1 * 6


def test_min_mode_and_ties_follow_the_selection_rule():
    # equal metrics: the lower validation loss wins, then the lower trial number
    assert trial_order({3: 0.8, 1: 0.8, 2: 0.8}, {3: 0.2, 1: 0.3, 2: 0.2}) == [2, 3, 1]
    assert trial_order({0: 0.1, 1: 0.3}, {0: 1.0, 1: 1.0}, mode="min") == [0, 1]
    # a diverged trial (NaN loss) loses a tie; a NaN metric comes last whatever its loss
    assert trial_order({0: 0.5, 1: 0.5, 2: math.nan}, {0: math.nan, 1: 0.9, 2: 0.1}) == [1, 0, 2]
    with pytest.raises(ValueError, match="select.mode"):
        trial_order({0: 1.0}, {0: 1.0}, mode="best")


def test_a_rung_needs_the_rung_below_finished():
    search = halving([4, 7, 9], max_epochs=3, eta=3)
    results = {(4, 0): RungResult(0.5, 1.0), (9, 0): RungResult(0.6, 1.0)}
    with pytest.raises(HalvingError, match=r"rung 1 needs .* point\(s\) \[7\]"):
        search.rung_points(1, results)
    results[7, 0] = RungResult(0.4, 1.0)
    assert search.rung_points(1, results) == [9]
    with pytest.raises(HalvingError, match=r"not finished.*\[9\]"):
        search.selected(results)


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=(), budgets=(1, 3), eta=3), "no points"),
    (dict(points=(1, 1), budgets=(1, 3), eta=3), "twice"),
    (dict(points=(1, 2), budgets=(1, 3), eta=1), "eta=1"),
    (dict(points=(1, 2), budgets=(3, 1), eta=3), "increasing"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(HalvingError, match=match):
        Halving(**kwargs)


def test_bad_budgets_are_named():
    with pytest.raises(HalvingError, match="min_epochs=5 exceeds finetune.max_epochs=3"):
        geometric_budgets(3, 3, 5)
    with pytest.raises(HalvingError, match="eta=1"):
        geometric_budgets(9, 1)
    with pytest.raises(HalvingError, match="rung 3"):
        halving(range(3), 9, 3).size(3)
