"""The fine-tune search of a study: which trials of each (model, dataset) it trains, and how far.

``finetune.search`` in a study config picks the protocol:

- ``grid`` trains every listed Halton point (``finetune.trials``) for the full budget at every seed
  (``finetune.seeds``), as the paper does; the analysis selects a point per (model, dataset) on validation.
- ``halving`` runs successive halving (:mod:`medxfer.training.halving`) over the same points at the first seed:
  every point trains the first rung's epochs; the best ``1/eta`` of them (the selection rule of
  :mod:`medxfer.analysis.selection`) go on from their checkpoint to the next rung's, and so on up to the full
  budget. The selected point is then trained at the other seeds (replicates for the analysis' reliability
  measures). A rung below the full budget is a cell of its own (``finetune.stop_epoch``); the full budget is the
  trial's cell whichever search reached it.

Every rung's results are read back from the tracking store, so a rerun trains nothing that has finished, a killed
search goes on from its last finished rung (and a rung killed mid-way from its trial's ``last.ckpt``), and
processes sharing a store split a rung's points between them through the cells' claims.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from medxfer.errors import MedxferError
from medxfer.training.halving import Halving, RungResult, halving

SEARCH_KINDS = ("grid", "halving")


class SearchConfigError(MedxferError, ValueError):
    """A study's ``finetune.search`` settings that cannot make a search."""


@dataclass(frozen=True)
class SearchSettings:
    """A study's fine-tune protocol: the search kind, its Halton points, seeds and, for halving, the reduction
    factor and the first rung's least epochs."""

    kind: str
    points: tuple[int, ...]
    seeds: tuple[int, ...]
    eta: int = 3
    min_epochs: int = 1

    def halving(self, max_epochs: int) -> Halving:
        """The halving search of these points up to ``max_epochs`` (geometric rung budgets)."""
        return halving(self.points, max_epochs, self.eta, self.min_epochs)

    def protocol(self, max_epochs: int) -> dict[str, str]:
        """The protocol as run tags: what produced a ground truth, stated on every run it affects."""
        tags = {"search": self.kind, "search_points": ",".join(map(str, self.points)),
                "search_seeds": ",".join(map(str, self.seeds)), "search_max_epochs": str(max_epochs)}
        if self.kind == "halving":
            h = self.halving(max_epochs)
            tags.update({"search_eta": str(self.eta), "search_budgets": ",".join(map(str, h.budgets)),
                         "search_epochs": f"{h.epochs()} of {h.grid_epochs()}"})
        tags["search_protocol"] = self.title(max_epochs)
        return tags

    def title(self, max_epochs: int) -> str:
        """One line naming the protocol, for tables and figures."""
        points = f"{len(self.points)} Halton point{'s' * (len(self.points) != 1)}"
        seeds = f"{len(self.seeds)} seed{'s' * (len(self.seeds) != 1)}"
        if self.kind == "grid":
            return f"grid search: {points} x {max_epochs} epochs, {seeds}"
        h = self.halving(max_epochs)
        budgets = "/".join(map(str, h.budgets))
        return (f"successive halving (eta {self.eta}, rungs at {budgets} epochs) over {points}, selected point "
                f"at {seeds}; {h.epochs()} of the grid's {h.grid_epochs()} epochs")


def search_settings(ft: Mapping[str, Any]) -> SearchSettings:
    """The search of a study's ``finetune`` block (``search``, ``trials``, ``seeds``, ``halving``), checked."""
    kind = ft.get("search", "grid")
    if kind not in SEARCH_KINDS:
        raise SearchConfigError(f"finetune.search={kind!r}; expected one of {list(SEARCH_KINDS)}")
    points = tuple(int(t) for t in ft["trials"])
    seeds = tuple(int(s) for s in (ft.get("seeds") or [0]))
    if len(set(seeds)) != len(seeds):
        raise SearchConfigError(f"finetune.seeds lists a seed twice: {list(seeds)}")
    opts = dict(ft.get("halving") or {})
    unknown = sorted(set(opts) - {"eta", "min_epochs"})
    if unknown:
        raise SearchConfigError(f"finetune.halving: unknown key(s) {unknown}; expected eta, min_epochs")
    settings = SearchSettings(kind, points, seeds, opts.get("eta", 3), opts.get("min_epochs", 1))
    if kind == "halving":
        Halving(points, (1,), settings.eta)  # the points and eta, checked before anything runs
    return settings


#: A finished rung's metrics as the search reads them: ``{metric name: value}`` (the run's metrics).
Metrics = Mapping[str, float]


def rung_result(metrics: Metrics) -> RungResult:
    """What the search selects by, from a rung's (or full trial's) metrics; a diverged trial logs no finite
    validation metrics and counts as NaN (last)."""
    from medxfer.analysis.selection import SELECTION_METRIC  # the analysis package loads pandas: not at import

    return RungResult(float(metrics.get(SELECTION_METRIC, math.nan)), float(metrics.get("best/val_loss", math.nan)))


@dataclass
class SearchState:
    """How far the halving search of one (model, dataset) has come, from the results found so far.

    ``results`` holds each finished (point, rung); ``rung`` is the first rung with a point still to train (None
    once the search is finished); ``pending`` its points without a result; ``selected`` the point chosen (None
    until the last rung is finished)."""

    results: dict[tuple[int, int], RungResult]
    rung: int | None
    pending: list[int]
    selected: int | None


def search_state(h: Halving, finished: Callable[[int, int], Metrics | None]) -> SearchState:
    """The state of the search ``h``: ``finished(point, rung)`` gives the metrics of that rung's finished run,
    or None. Reads rung by rung, each rung's points decided by the results of the one below."""
    results: dict[tuple[int, int], RungResult] = {}
    for rung in range(h.rungs):
        points = h.rung_points(rung, results)
        pending = []
        for point in points:
            metrics = finished(point, rung)
            if metrics is None:
                pending.append(point)
            else:
                results[point, rung] = rung_result(metrics)
        if pending:
            return SearchState(results, rung, pending, None)
    return SearchState(results, None, [], h.selected(results))


def run_halving(h: Halving, train: Callable[[int, int], tuple[Metrics | None, str | None]], *,
                discard: Callable[[str], None], label: str, wait_s: float = 5.0) -> SearchState:
    """Run the search ``h`` to its end: ``train(point, rung)`` trains (or finds finished) one rung of one point
    and returns its metrics (None when another process holds it) and its checkpoint folder. A point claimed by
    another process is asked again every ``wait_s`` until its run has finished. Once a rung is finished, the
    checkpoints of the points it leaves out go (``discard(folder)``): nothing trains them further."""
    results: dict[tuple[int, int], RungResult] = {}
    for rung in range(h.rungs):
        points = h.rung_points(rung, results)
        print(f"[search] {label}: rung {rung + 1}/{h.rungs}, {len(points)} point(s) to epoch {h.budgets[rung]}",
              flush=True)
        folders: dict[int, str | None] = {}
        pending = list(points)
        while pending:
            held = []
            for point in pending:
                metrics, folders[point] = train(point, rung)
                if metrics is None:
                    held.append(point)
                else:
                    results[point, rung] = rung_result(metrics)
            if held:
                print(f"[search] {label}: point(s) {held} of rung {rung + 1} are trained by another process; "
                      f"waiting {wait_s:g}s", flush=True)
                time.sleep(wait_s)
            pending = held
        if rung + 1 < h.rungs:
            going_on = set(h.rung_points(rung + 1, results))
            for point in points:
                if point not in going_on and folders.get(point):
                    discard(folders[point])
    selected = h.selected(results)
    print(f"[search] {label}: selected point {selected}", flush=True)
    return SearchState(results, None, [], selected)
