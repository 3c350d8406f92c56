"""Successive halving over a fixed list of search points: which points train how far.

The paper picks, per (model, dataset), the best of 75 Halton points of (lr, weight decay), each trained the full
budget. Successive halving (Jamieson & Talwalkar, AISTATS 2016; the synchronous form of ASHA, Li et al. 2020) finds
the same best point at a fraction of that compute: every point trains the first rung's budget; the best
``1/eta`` of them by the selection rule (:mod:`medxfer.analysis.selection`) continue *from their checkpoint* to the
next rung's budget; and so on, until the survivors reach the full budget.

Each point's learning-rate schedule spans the full budget (``max_epochs``), whichever rung it stops at. A point
that reaches the last rung has therefore followed exactly the trajectory that a full grid search trains it on:
halving changes which points are trained to the end, never what training a point means, so a halving search and
a grid search can be compared point by point.

Budgets are geometric: with ``max_epochs = 27``, ``eta = 3`` and ``min_epochs = 3`` the rungs train to 3, 9 and 27
epochs, and of 75 points 25 reach the second rung and 8 the last; compute is 75*3 + 25*6 + 8*18 = 519
epochs instead of 75*27 = 2,025 (26 %).

This module is pure: it says which points a rung trains given the results of the rung below. Training a rung,
tracking it and resuming it are the fine-tune stage's; because each (point, rung) is a content-keyed cell, a rerun
of a finished search trains nothing, and a rung's points can run in parallel (one task per point and rung).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from medxfer.errors import MedxferError


class HalvingError(MedxferError, ValueError):
    """A successive-halving setting that cannot make a schedule (budgets, reduction factor, points)."""


@dataclass(frozen=True)
class RungResult:
    """What one point reached at the end of one rung: the selection metric of its best checkpoint so far (higher
    is better unless the search says ``mode=min``) and that checkpoint's validation loss (the tie-break)."""

    metric: float
    val_loss: float


@dataclass(frozen=True)
class Halving:
    """A successive-halving search over ``points`` (Halton trial indices, in the order given).

    ``budgets[r]`` is the number of epochs a point of rung ``r`` has trained when the rung ends (ascending; the
    last is the full budget); ``eta`` is the reduction factor: rung ``r`` trains ``max(1, len(points) // eta**r)``
    points.
    """

    points: tuple[int, ...]
    budgets: tuple[int, ...]
    eta: int

    def __post_init__(self) -> None:
        if not self.points:
            raise HalvingError("finetune.search: no points to search (finetune.trials is empty)")
        if len(set(self.points)) != len(self.points):
            raise HalvingError(f"finetune.trials lists a point twice: {list(self.points)}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise HalvingError(f"finetune.search.eta={self.eta!r}: the reduction factor must be an integer >= 2")
        if not self.budgets or any(b < 1 for b in self.budgets) or list(self.budgets) != sorted(set(self.budgets)):
            raise HalvingError(f"finetune.search budgets {list(self.budgets)}: expected strictly increasing epochs >= 1")

    @property
    def rungs(self) -> int:
        return len(self.budgets)

    def size(self, rung: int) -> int:
        """How many points rung ``rung`` trains."""
        self._check_rung(rung)
        return max(1, len(self.points) // self.eta ** rung)

    def rung_points(self, rung: int, results: Mapping[tuple[int, int], RungResult] | None = None,
                    mode: str = "max") -> list[int]:
        """The points rung ``rung`` trains, best first above rung 0: every point at rung 0; above it, the best
        :meth:`size` points of the rung below by the selection rule. ``results`` maps (point, rung) to what that
        point reached at the end of that rung; every point of every rung below ``rung`` must have one (else the
        rung below is not finished: an error naming the points)."""
        from medxfer.analysis.selection import trial_order  # the analysis package loads pandas: not at import

        self._check_rung(rung)
        results = results or {}
        points = list(self.points)
        for below in range(rung):
            missing = [p for p in points if (p, below) not in results]
            if missing:
                raise HalvingError(f"rung {below + 1} needs the result of every point of rung {below}; "
                                   f"none yet for point(s) {missing}")
            order = trial_order({p: results[p, below].metric for p in points},
                                {p: results[p, below].val_loss for p in points}, mode)
            points = order[: self.size(below + 1)]
        return points

    def selected(self, results: Mapping[tuple[int, int], RungResult], mode: str = "max") -> int:
        """The point the search selects: the best of the last rung by the selection rule."""
        from medxfer.analysis.selection import trial_order

        last = self.rungs - 1
        points = self.rung_points(last, results, mode)
        missing = [p for p in points if (p, last) not in results]
        if missing:
            raise HalvingError(f"the search is not finished: no result yet for point(s) {missing} of rung {last}")
        return trial_order({p: results[p, last].metric for p in points},
                           {p: results[p, last].val_loss for p in points}, mode)[0]

    def epochs(self) -> int:
        """The epochs the whole search trains: each rung's points train from the rung below's budget to their own."""
        total, previous = 0, 0
        for rung, budget in enumerate(self.budgets):
            total += self.size(rung) * (budget - previous)
            previous = budget
        return total

    def grid_epochs(self) -> int:
        """The epochs of the grid search over the same points: every point to the full budget."""
        return len(self.points) * self.budgets[-1]

    def _check_rung(self, rung: int) -> None:
        if not 0 <= rung < self.rungs:
            raise HalvingError(f"rung {rung}: this search has rungs 0..{self.rungs - 1}")


def geometric_budgets(max_epochs: int, eta: int, min_epochs: int = 1) -> tuple[int, ...]:
    """The rung budgets ``max_epochs / eta**k`` (rounded, ascending) for every ``k`` whose budget is at least
    ``min_epochs``; the last rung is always ``max_epochs``.

    >>> geometric_budgets(27, 3, 3)
    (3, 9, 27)
    >>> geometric_budgets(10, 3, 1)
    (1, 3, 10)
    """
    for name, value, least in (("max_epochs", max_epochs, 1), ("eta", eta, 2), ("min_epochs", min_epochs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise HalvingError(f"finetune.search.{name}={value!r}: expected an integer >= {least}")
    if min_epochs > max_epochs:
        raise HalvingError(f"finetune.search.min_epochs={min_epochs} exceeds finetune.max_epochs={max_epochs}")
    budgets = {max_epochs}
    k = 1
    while (b := max_epochs / eta ** k) >= min_epochs:
        budgets.add(max(1, math.floor(b + 0.5)))
        k += 1
    return tuple(sorted(budgets))


def halving(points: Sequence[int], max_epochs: int, eta: int = 3, min_epochs: int = 1) -> Halving:
    """The successive-halving search over ``points`` with geometric budgets up to ``max_epochs``."""
    return Halving(tuple(int(p) for p in points), geometric_budgets(max_epochs, eta, min_epochs), eta)
