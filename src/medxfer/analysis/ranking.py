"""A ranking of models for one dataset, with the uncertainty a decision needs.

- :func:`ranker_values`: each model's value under a ranker (one score, an ensemble of scores, or a data-blind
  baseline's value per model).
- :func:`rank_of`: rank 1 = highest value, ties share the best rank, values compared at 10 significant digits.
- :func:`rank_intervals`: the percentile interval of each model's rank over bootstrap draws of the dataset's
  images.
- :func:`shortlist_size`: how many models to fine-tune: enough to hold every model whose interval reaches rank 1,
  and at least as many as the ranker needed in the study to hold the best model on every dataset.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from medxfer.analysis.correlation import comparable
from medxfer.analysis.ensembles import apply_pooling, mean_rank, mean_zscore


def ranker_values(values: Mapping[str, Mapping[str, float]], scores: list[str], kind: str | None,
                  weights: Mapping[str, float] | None = None) -> pd.Series:
    """Per model, the value of a ranker from its scores' values (``values[model][score]``): the single score
    (``kind`` None), or the ensemble of ``scores`` (``kind`` rank, zscore or linear with ``weights``)."""
    models = list(values)
    if kind is None:
        return pd.Series([float(values[m][scores[0]]) for m in models], index=models, dtype=float)
    long = pd.DataFrame([{"dataset": "ranked", "model": m, "score": s, "value": float(values[m][s])}
                         for m in models for s in scores])
    if kind == "rank":
        pooled = mean_rank(long, scores)
    elif kind == "zscore":
        pooled = mean_zscore(long, scores)
    elif kind == "linear":
        pooled = apply_pooling(long, pd.Series(dict(weights or {}), dtype=float))
    else:
        raise ValueError(f"unknown ensemble kind {kind!r}; expected rank, zscore or linear")
    return pooled.set_index("model")["value"].reindex(models).astype(float)


def rank_of(values: pd.Series) -> pd.Series:
    """Rank of each value, 1 = highest; ties share the best rank; NaN stays NaN."""
    return comparable(values.astype(float)).rank(ascending=False, method="min")


def rank_intervals(draws: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Per model (``draws``' columns; one row per bootstrap draw of the images, values of the ranker), the
    ``level`` percentile interval of its rank, ``rank_lo`` (best) and ``rank_hi`` (worst), and ``p_top``: the share
    of draws in which it ranks first. A draw with a missing value is left out."""
    draws = draws.dropna(axis=0, how="any")
    if not len(draws):
        return pd.DataFrame({"rank_lo": np.nan, "rank_hi": np.nan, "p_top": np.nan}, index=draws.columns)
    ranks = draws.apply(rank_of, axis=1)
    tail = (1 - level) / 2
    return pd.DataFrame({"rank_lo": np.floor(ranks.quantile(tail)), "rank_hi": np.ceil(ranks.quantile(1 - tail)),
                         "p_top": (ranks == 1).mean()}, index=draws.columns)


def shortlist_size(rank_lo: pd.Series, best_within: int | None, n_models: int) -> int:
    """The number of top-ranked models to fine-tune: every model whose rank interval reaches rank 1, and at least
    ``best_within`` (the worst rank the ranker gave the best model on a study dataset); at most ``n_models``."""
    reach_top = int((rank_lo.fillna(np.inf) <= 1).sum())
    return int(max(1, min(n_models, max(reach_top, best_within or 1))))
