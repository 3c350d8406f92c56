"""Data-blind baselines that a transferability score should beat (Singh, Hess and Vanschoren 2025, "How NOT to
benchmark your SITE metric"): when some models are better than others on every dataset, a heuristic that never
looks at the target data ranks well, and a score's tau means little unless it beats them.

- ``static_rank``: for held-out dataset ``d``, each model's mean fractional rank by fine-tuned accuracy on the
  study's *other* datasets (leave-one-dataset-out). The fractional rank on one dataset of ``n`` models is
  ``(rank - 1) / (n - 1)``, from 0 (worst) to 1 (best), ties sharing the average rank; it equals the mean rank up
  to scale when every model has every dataset, and stays comparable when some lack one. A model seen on no
  other dataset gets no value.
- ``n_params``: the backbone's parameter count (the source head excluded: it is replaced by fine-tuning),
  logged by every fine-tune run as the param ``n_params``.
- ``dispersion``: the mean Kendall tau-b between the accuracy rankings of every pair of datasets (over the models
  both have): near 1, the hierarchy is static and ``static_rank`` is hard to beat.

All are rows of the long table ``dataset, model, score, value, target`` that :func:`correlate` takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from medxfer.analysis.correlation import comparable, pooled_tau

STATIC_RANK = "static_rank"
N_PARAMS = "n_params"
BASELINES = (STATIC_RANK, N_PARAMS)


def _accuracies(table: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per (dataset, model) from a long table (the target repeats for every score)."""
    acc = table[["dataset", "model", "target"]].drop_duplicates(["dataset", "model"])
    return acc.assign(target=acc["target"].astype(float), ranked=comparable(acc["target"].astype(float)))


def fractional_ranks(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model): ``(rank - 1) / (n - 1)`` of its accuracy (``ranked``: at 10 significant digits)
    among the dataset's ``n`` models."""
    out = []
    for dataset, g in accuracy.groupby("dataset", sort=True):
        n = len(g)
        ranks = stats.rankdata(g["ranked"].to_numpy(float))
        frac = (ranks - 1) / (n - 1) if n > 1 else np.full(n, np.nan)
        out.append(pd.DataFrame({"dataset": dataset, "model": g["model"].to_numpy(), "frac_rank": frac}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["dataset", "model", "frac_rank"])


def static_rank(table: pd.DataFrame) -> pd.DataFrame:
    """The ``static_rank`` score of every (dataset, model): the mean fractional rank of the model on the other
    datasets. Returns rows ``dataset, model, score, value, target`` (target: the model's accuracy on the held-out
    dataset, for the correlation; it is never used for the value). Empty with fewer than 2 datasets."""
    acc = _accuracies(table)
    ranks = fractional_ranks(acc)
    rows = []
    for held_out, g in acc.groupby("dataset", sort=True):
        others = ranks[(ranks["dataset"] != held_out) & ranks["frac_rank"].notna()]
        mean = others.groupby("model")["frac_rank"].mean()
        for model, target in zip(g["model"], g["target"]):
            if model in mean.index:
                rows.append({"dataset": held_out, "model": model, "score": STATIC_RANK, "value": float(mean[model]),
                             "target": float(target)})
    return pd.DataFrame(rows, columns=["dataset", "model", "score", "value", "target"])


def n_params_rows(table: pd.DataFrame, n_params: Mapping[str, float]) -> pd.DataFrame:
    """The ``n_params`` score rows for the models of ``table`` that have a count in ``n_params``."""
    acc = _accuracies(table)
    acc = acc[acc["model"].isin(list(n_params))]
    return pd.DataFrame({"dataset": acc["dataset"].to_numpy(), "model": acc["model"].to_numpy(), "score": N_PARAMS,
                         "value": [float(n_params[m]) for m in acc["model"]], "target": acc["target"].to_numpy(float)},
                        columns=["dataset", "model", "score", "value", "target"])


def add_baselines(table: pd.DataFrame, n_params: Mapping[str, float] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``table`` with the baseline rows appended, and notes on the baselines left out (and why)."""
    notes, parts = [], [table]
    if table["dataset"].nunique() < 2:
        notes.append("static_rank left out: it ranks by the other datasets' accuracies and the study has one dataset")
    else:
        parts.append(static_rank(table))
    counts = {m: v for m, v in (n_params or {}).items() if v is not None and np.isfinite(float(v))}
    lacking = sorted(set(table["model"]) - set(counts))
    if lacking:
        notes.append(f"n_params left out: no parameter count (param n_params) for model(s) {', '.join(lacking)}; "
                     "fine-tune runs log it")
    else:
        parts.append(n_params_rows(table, counts))
    return pd.concat(parts, ignore_index=True), notes


def dispersion(table: pd.DataFrame) -> float:
    """Mean Kendall tau-b between the accuracy rankings of every pair of datasets, over the models both have
    (NaN with fewer than 2 datasets)."""
    acc = _accuracies(table).pivot(index="model", columns="dataset", values="ranked")
    taus = []
    for a, b in combinations(sorted(acc.columns), 2):
        both = acc[[a, b]].dropna()
        if len(both) >= 2:
            t = pooled_tau([(both[a].to_numpy(float), both[b].to_numpy(float))])
            if np.isfinite(t):
                taus.append(t)
    return float(np.mean(taus)) if taus else float("nan")
