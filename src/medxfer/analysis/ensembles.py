"""Ensembles of transferability scores: the mean within-dataset rank, the mean within-dataset z-score, and a
linear pooling learned leave-one-dataset-out.

Every ensemble is computed within each dataset from the long table that :func:`correlate` takes and is appended
to it as one more ``score``, so that it gets the same tau, bootstrap interval, weighted tau and regret as the
scores it combines. Scores compare at 10 significant digits everywhere in the analysis (:func:`comparable`).

Definitions (``n`` models of a dataset that have every chosen score):

- ``rank``: per chosen score, the models' ranks 1..n (higher score = higher rank, ties share the average rank);
  the ensemble is the mean of these ranks over the chosen scores.
- ``zscore``: per chosen score, ``(x - mean) / std`` over the models (population std, ddof = 0); a score that is
  constant over the models contributes 0 (and an :class:`EnsembleWarning` names it); the ensemble is the mean.
- ``linear``: for each held-out dataset, ridge weights ``w = argmin (1/N) ||y - Z w||^2 + alpha ||w||^2`` fitted
  on the N (dataset, model) rows of the *other* datasets, where ``Z`` holds the within-dataset z-scores of the
  chosen scores and ``y`` the within-dataset z-score of the target (accuracy); no intercept (both sides are
  centred within each dataset). The held-out dataset's ensemble is ``Z_held_out @ w``: its target is never used.
  :func:`fit_linear_pooling` fits the same weights on every dataset and :func:`apply_pooling` applies them to
  the scores of a dataset without accuracies (ranking models for a new dataset).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from medxfer.analysis.correlation import REQUIRED, AnalysisError, _check

KINDS = ("rank", "zscore", "linear")
SCORE_COLUMNS = ["dataset", "model", "score", "value"]  # a table of scores without accuracies
DEFAULT_ALPHA = 1e-3
NO_HOLD_OUT = "none"  # ``held_out`` of the weights fitted on every dataset


class EnsembleWarning(UserWarning):
    """An ensemble left something out or gave it no weight: a constant score, an incomplete model."""


@dataclass(frozen=True)
class Ensemble:
    """One ensemble: its ``name`` (the ``score`` it gets in the table), ``kind`` (rank | zscore | linear), the
    ``scores`` it combines (None: every score in the table) and the ridge penalty ``alpha`` (linear only)."""

    name: str
    kind: str
    scores: tuple[str, ...] | None = None
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AnalysisError(f"an ensemble needs a non-empty name; got {self.name!r}")
        if self.kind not in KINDS:
            raise AnalysisError(f"ensemble {self.name!r}: unknown kind {self.kind!r}; expected one of {list(KINDS)}")
        if self.scores is not None:
            if isinstance(self.scores, str) or not self.scores:
                raise AnalysisError(f"ensemble {self.name!r}: scores must be a non-empty list of score names "
                                    f"(or null for every score); got {self.scores!r}")
            object.__setattr__(self, "scores", tuple(dict.fromkeys(self.scores)))
        if not (isinstance(self.alpha, (int, float)) and np.isfinite(self.alpha) and self.alpha >= 0):
            raise AnalysisError(f"ensemble {self.name!r}: alpha must be a finite number >= 0; got {self.alpha!r}")


def parse_ensembles(spec: Mapping | Iterable | None) -> list[Ensemble]:
    """Ensembles from a config: a mapping ``name -> {kind, scores, alpha}`` (the form of ``conf/analyze.yaml``),
    or a list of ``{name, kind, scores, alpha}``; None or empty: no ensembles."""
    if not spec:
        return []
    if isinstance(spec, Mapping):
        items = [{"name": name, **(dict(body) if body else {})} for name, body in spec.items()]
    else:
        items = [dict(body) for body in spec]
    out = []
    for item in items:
        unknown = sorted(set(item) - {"name", "kind", "scores", "alpha"})
        if unknown:
            raise AnalysisError(f"ensemble {item.get('name')!r}: unknown key(s) {unknown}; expected kind, scores, alpha")
        if "kind" not in item:
            raise AnalysisError(f"ensemble {item.get('name')!r} has no kind; expected one of {list(KINDS)}")
        scores = item.get("scores")
        out.append(Ensemble(name=item.get("name"), kind=item["kind"],
                            scores=tuple(scores) if scores is not None and not isinstance(scores, str) else scores,
                            alpha=item.get("alpha", DEFAULT_ALPHA)))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AnalysisError(f"ensemble name(s) {dup} given more than once")
    return out


@dataclass
class EnsembleResult:
    """``table``: the input long table with one row per (dataset, model) and ensemble appended (``score`` = the
    ensemble's name). ``weights``: the linear ensembles' weights, one row per (ensemble, held-out dataset), columns
    ``ensemble, held_out, n_train, alpha`` and ``weight/<score>`` per score (``held_out = "none"``: fitted on every
    dataset); empty without a linear ensemble."""

    table: pd.DataFrame
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)


# --- preparation ------------------------------------------------------------------------------------------------

@dataclass
class _Wide:
    values: pd.DataFrame          # index (dataset, model), one column per chosen score (comparable values)
    target: pd.Series | None      # index (dataset, model)


def _choose(t: pd.DataFrame, scores: Iterable[str] | None, what: str, where: str) -> list[str]:
    available = sorted(t["score"].unique())
    if scores is None:
        return available
    scores = list(dict.fromkeys(scores))
    unknown = [s for s in scores if s not in available]
    if unknown:
        raise AnalysisError(f"{what}: score(s) {unknown} not in {where}; available: {available}")
    if not scores:
        raise AnalysisError(f"{what}: no score to combine; available: {available}")
    return scores


def _wide(t: pd.DataFrame, scores: list[str], *, what: str, allow_incomplete: bool) -> _Wide:
    """One row per (dataset, model) of the table, with every chosen score; models that lack one raise (or, with
    ``allow_incomplete``, are left out with a warning, as are datasets left with fewer than 2 models)."""
    cells = pd.MultiIndex.from_frame(t[["dataset", "model"]].drop_duplicates().sort_values(["dataset", "model"]))
    chosen = t[t["score"].isin(scores)]
    values = chosen.pivot(index=["dataset", "model"], columns="score", values="ranked").reindex(index=cells, columns=scores)
    lacking = [(d, m, s) for (d, m), row in values.iterrows() for s in scores if pd.isna(row[s])]
    if lacking:
        listed = ", ".join(f"model={m!r} dataset={d!r} score={s!r}" for d, m, s in lacking[:5])
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        if not allow_incomplete:
            raise AnalysisError(
                f"{what}: a model lacks a score the ensemble combines: {listed}{more}. Every model needs every "
                "score of the ensemble in each dataset: choose the ensemble's scores, or pass allow_incomplete=true "
                "to leave such models out of the ensemble")
        warnings.warn(f"{what}: left out of the ensemble (a score missing): {listed}{more}", EnsembleWarning, stacklevel=3)
        values = values.dropna()
    sizes = values.groupby(level="dataset").size()
    small = sorted(sizes.index[sizes < 2]) + sorted(set(cells.get_level_values("dataset")) - set(sizes.index))
    if small:
        if not allow_incomplete:
            raise AnalysisError(f"{what}: dataset(s) {small} have fewer than 2 models with every score; nothing to rank")
        warnings.warn(f"{what}: dataset(s) {small} have fewer than 2 models with every score; left out of the ensemble",
                      EnsembleWarning, stacklevel=3)
        values = values[~values.index.get_level_values("dataset").isin(small)]
    target = None
    if "target" in t.columns:
        per_cell = t.groupby(["dataset", "model"])["target"]
        spread = per_cell.max() - per_cell.min()
        if (spread > 0).any():
            d, m = spread.index[np.flatnonzero(spread.to_numpy() > 0)[0]]
            raise AnalysisError(f"{what}: dataset={d!r} model={m!r} has different targets on different score rows; "
                                "a model has one accuracy per dataset")
        target = per_cell.first().reindex(values.index)
    return _Wide(values, target)


def _zscores(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise z-scores (ddof = 0) of an (n, k) array, 0 for a constant column; and the constant-column mask."""
    constant = values.max(axis=0) == values.min(axis=0)
    sd = np.where(constant, 1.0, values.std(axis=0))
    return np.where(constant, 0.0, (values - values.mean(axis=0)) / sd), constant


def _zscores_within(frame: pd.DataFrame, what: str, label: str = "score") -> pd.DataFrame:
    """Z-scores of each column within each dataset; warns once, naming every (dataset, column) that is constant."""
    out, constant = [], []
    for dataset, g in frame.groupby(level="dataset", sort=True):
        z, const = _zscores(g.to_numpy(float))
        out.append(pd.DataFrame(z, index=g.index, columns=frame.columns))
        constant += [f"{dataset}/{col}" for col, c in zip(frame.columns, const) if c]
    if constant:
        warnings.warn(f"{what}: {label}(s) constant over the models of a dataset contribute 0 to its z-scores: "
                      + ", ".join(constant), EnsembleWarning, stacklevel=3)
    return pd.concat(out) if out else frame.iloc[:0]


def _frame(index: pd.MultiIndex, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"dataset": index.get_level_values("dataset"), "model": index.get_level_values("model"),
                         "value": np.asarray(values, float)})


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin_w (1/n) ||y - z w||^2 + alpha ||w||^2 (minimum-norm least squares when alpha = 0)."""
    n, k = z.shape
    if alpha > 0:
        return np.linalg.solve(z.T @ z + n * alpha * np.eye(k), z.T @ y)
    return np.linalg.lstsq(z, y, rcond=None)[0]


def _prepare(table: pd.DataFrame, scores, *, what: str, where: str = "the table", allow_incomplete: bool,
             columns: list[str] = REQUIRED) -> tuple[_Wide, list[str]]:
    t = _check(table, columns)
    chosen = _choose(t, scores, what, where)
    return _wide(t, chosen, what=what, allow_incomplete=allow_incomplete), chosen


# --- the three kinds on a prepared table --------------------------------------------------------------------------

def _mean_rank(w: _Wide) -> pd.DataFrame:
    parts = [_frame(g.index, stats.rankdata(g.to_numpy(float), method="average", axis=0).mean(axis=1))
             for _, g in w.values.groupby(level="dataset", sort=True)]
    return pd.concat(parts, ignore_index=True)


def _mean_zscore(w: _Wide, what: str) -> pd.DataFrame:
    z = _zscores_within(w.values, what)
    return _frame(z.index, z.to_numpy(float).mean(axis=1))


def _standardised(w: _Wide, what: str) -> tuple[pd.DataFrame, pd.Series]:
    if w.target is None:
        raise AnalysisError(f"{what}: a learned pooling needs the target column (accuracy) to fit on")
    z = _zscores_within(w.values, what)
    y = _zscores_within(w.target.to_frame("target"), what, label="target")["target"]
    return z, y.reindex(z.index)


def _weight_columns(scores: list[str], weights: np.ndarray) -> dict[str, float]:
    # prefixed: a score may well be called "alpha"
    return {f"weight/{s}": float(v) for s, v in zip(scores, weights)}


def _linear_lodo(w: _Wide, scores: list[str], alpha: float, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    datasets = sorted(w.values.index.get_level_values("dataset").unique())
    if len(datasets) < 2:
        raise AnalysisError(
            f"{what}: leave-one-dataset-out needs >= 2 datasets (weights are fitted on the other datasets and "
            f"evaluated on the held-out one); found {len(datasets)}: {datasets}. Analyse more datasets or drop "
            "the linear ensemble (fit_linear_pooling fits weights on every dataset without evaluating them)")
    z, y = _standardised(w, what)
    held = z.index.get_level_values("dataset")
    values, rows = [], []
    for dataset in datasets:
        train = held != dataset
        weights = _ridge(z.to_numpy(float)[train], y.to_numpy(float)[train], alpha)
        values.append(_frame(z.index[~train], z.to_numpy(float)[~train] @ weights))
        rows.append({"held_out": dataset, "n_train": int(train.sum()), "alpha": alpha, **_weight_columns(scores, weights)})
    everything = _ridge(z.to_numpy(float), y.to_numpy(float), alpha)
    rows.append({"held_out": NO_HOLD_OUT, "n_train": len(z), "alpha": alpha, **_weight_columns(scores, everything)})
    return pd.concat(values, ignore_index=True), pd.DataFrame(rows)


# --- public functions -----------------------------------------------------------------------------------------------

def mean_rank(table: pd.DataFrame, scores: Iterable[str] | None = None, *, allow_incomplete: bool = False) -> pd.DataFrame:
    """Mean over ``scores`` (None: every score in the table) of each model's within-dataset rank (1 = lowest score,
    ties averaged). ``table``: ``dataset, model, score, value`` (a target column is not needed). Returns
    ``dataset, model, value``."""
    w, _ = _prepare(table, scores, what="mean_rank", allow_incomplete=allow_incomplete, columns=SCORE_COLUMNS)
    return _mean_rank(w)


def mean_zscore(table: pd.DataFrame, scores: Iterable[str] | None = None, *, allow_incomplete: bool = False) -> pd.DataFrame:
    """Mean over ``scores`` of each model's within-dataset z-score (ddof = 0; a constant score contributes 0, with an
    :class:`EnsembleWarning`). ``table``: ``dataset, model, score, value`` (no target needed). Returns
    ``dataset, model, value``."""
    w, _ = _prepare(table, scores, what="mean_zscore", allow_incomplete=allow_incomplete, columns=SCORE_COLUMNS)
    return _mean_zscore(w, "mean_zscore")


def linear_lodo(table: pd.DataFrame, scores: Iterable[str] | None = None, *, alpha: float = DEFAULT_ALPHA,
                allow_incomplete: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The linear pooling evaluated leave-one-dataset-out (see the module docstring).

    Returns ``(values, weights)``: ``dataset, model, value`` where each dataset's values come from weights fitted
    on the other datasets only, and one row of weights per held-out dataset (``held_out, n_train, alpha`` and
    ``weight/<score>`` for each score) plus the row ``held_out = "none"`` fitted on every dataset. Raises :class:`AnalysisError`
    with fewer than 2 datasets.
    """
    w, chosen = _prepare(table, scores, what="linear_lodo", allow_incomplete=allow_incomplete)
    return _linear_lodo(w, chosen, alpha, "linear_lodo")


def fit_linear_pooling(table: pd.DataFrame, scores: Iterable[str] | None = None, *, alpha: float = DEFAULT_ALPHA,
                       allow_incomplete: bool = False) -> pd.Series:
    """Ridge weights of the within-dataset z-scored ``scores`` that best predict the within-dataset z-scored target,
    fitted on every dataset of the table (to rank models for a dataset with no accuracies yet, with
    :func:`apply_pooling`). Returns a Series indexed by score name."""
    w, chosen = _prepare(table, scores, what="fit_linear_pooling", allow_incomplete=allow_incomplete)
    z, y = _standardised(w, "fit_linear_pooling")
    return pd.Series(_ridge(z.to_numpy(float), y.to_numpy(float), alpha), index=pd.Index(chosen, name="score"), name="weight")


def apply_pooling(table: pd.DataFrame, weights: pd.Series | Mapping[str, float], *, allow_incomplete: bool = False) -> pd.DataFrame:
    """Pool the scores of ``table`` (``dataset, model, score, value``; no target needed) with ``weights`` (from
    :func:`fit_linear_pooling`): z-score each weighted score within each dataset and sum with the weights. Higher =
    predicted better. Returns ``dataset, model, value``."""
    weights = pd.Series(weights, dtype=float)
    w, chosen = _prepare(table, list(weights.index), what="apply_pooling", where="the table to pool",
                         allow_incomplete=allow_incomplete, columns=SCORE_COLUMNS)
    z = _zscores_within(w.values, "apply_pooling")
    return _frame(z.index, z.to_numpy(float) @ weights.reindex(chosen).to_numpy(float))


def add_ensembles(table: pd.DataFrame, ensembles: Iterable[Ensemble], *, allow_incomplete: bool = False,
                  where: str = "the table") -> EnsembleResult:
    """Append every ensemble to the long table as a new ``score`` (its name), with each model's target.

    ``where`` names the table in error messages (e.g. "the in-distribution table"). A score an ensemble names
    but the table lacks, a name already used by a score, or a model lacking a chosen score (unless
    ``allow_incomplete``: then it is left out of that ensemble, with a warning) raises :class:`AnalysisError`.
    A linear ensemble on a table of fewer than 2 datasets is skipped with an :class:`EnsembleWarning`.
    """
    ensembles = list(ensembles)
    if not ensembles:
        return EnsembleResult(table, pd.DataFrame())
    t = _check(table)
    clash = sorted({e.name for e in ensembles} & set(t["score"]))
    if clash:
        raise AnalysisError(f"ensemble name(s) {clash} already used by scores in {where}; rename the ensemble(s)")
    parts, weights = [table], []
    for e in ensembles:
        what = f"ensemble {e.name!r} (kind {e.kind}) on {where}"
        chosen = _choose(t, e.scores, what, where)
        w = _wide(t, chosen, what=what, allow_incomplete=allow_incomplete)
        if e.kind == "rank":
            values = _mean_rank(w)
        elif e.kind == "zscore":
            values = _mean_zscore(w, what)
        else:
            n_datasets = w.values.index.get_level_values("dataset").nunique()
            if n_datasets < 2:  # nothing to hold out: skipped, so that a one-dataset study still gets analysed
                warnings.warn(EnsembleWarning(
                    f"{what} skipped: leave-one-dataset-out needs >= 2 datasets, the table has {n_datasets}"),
                    stacklevel=2)
                continue
            values, fitted = _linear_lodo(w, chosen, e.alpha, what)
            weights.append(fitted.assign(ensemble=e.name))
        target = w.target.reindex(pd.MultiIndex.from_frame(values[["dataset", "model"]])).to_numpy(float)
        parts.append(values.assign(score=e.name, target=target)[REQUIRED])
    if weights:
        w = pd.concat(weights, ignore_index=True)
        w = w[["ensemble", "held_out", "n_train", "alpha", *[c for c in w.columns if c not in ("ensemble", "held_out", "n_train", "alpha")]]]
    else:
        w = pd.DataFrame()
    return EnsembleResult(pd.concat(parts, ignore_index=True), w)
