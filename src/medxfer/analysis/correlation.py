"""How well a transferability score ranks models: Kendall tau-b (with a bootstrap interval), weighted tau,
Pearson, Spearman and top-1 regret, per dataset and pooled over datasets."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from medxfer.errors import MedxferError

COLUMNS = ["dataset", "score", "n", "tau", "tau_lo", "tau_hi", "wtau", "pearson", "spearman", "regret"]
REQUIRED = ["dataset", "model", "score", "value", "target"]


class AnalysisError(MedxferError, ValueError):
    """The table given to the analysis is unusable; the message names the row or value at fault."""


class UndefinedCorrelation(UserWarning):
    """A correlation is undefined (e.g. every model has the same score) and is reported as NaN."""


def _pair_counts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the last axis of ``x``/``y`` (shape (..., n)): (concordant - discordant, pairs not tied in x,
    pairs not tied in y), counted over i < j."""
    n = x.shape[-1]
    iu = np.triu_indices(n, k=1)
    dx = np.sign(x[..., :, None] - x[..., None, :])[..., iu[0], iu[1]]
    dy = np.sign(y[..., :, None] - y[..., None, :])[..., iu[0], iu[1]]
    s = (dx * dy).sum(-1)
    return s, (dx != 0).sum(-1), (dy != 0).sum(-1)


def _tau_b(s, nx, ny):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((nx > 0) & (ny > 0), s / np.sqrt(nx.astype(float) * ny), np.nan)


def pooled_tau(groups: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Kendall tau-b with pairs counted only within each group (dataset); equals scipy's tau-b for one group."""
    s = nx = ny = 0
    for x, y in groups:
        a, b, c = _pair_counts(np.asarray(x, float), np.asarray(y, float))
        s, nx, ny = s + a, nx + b, ny + c
    return float(_tau_b(np.asarray(s), np.asarray(nx), np.asarray(ny)))


def bootstrap_tau(
    groups: list[tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of (pooled) tau-b when models are resampled with replacement within each group."""
    rng = np.random.default_rng(seed)
    s = nx = ny = 0
    for x, y in groups:
        x, y = np.asarray(x, float), np.asarray(y, float)
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        a, b, c = _pair_counts(x[idx], y[idx])
        s, nx, ny = s + a, nx + b, ny + c
    taus = _tau_b(s, nx, ny)
    taus = taus[np.isfinite(taus)]
    if len(taus) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(taus, alpha)), float(np.quantile(taus, 1 - alpha))


def top1_regret(value: np.ndarray, target: np.ndarray) -> float:
    """Best target minus the target of the model the score ranks first (ties on the top score: the worst of
    them, so a score cannot gain from ties)."""
    top = np.flatnonzero(value == value.max())
    return float(target.max() - target[top].min())


def comparable(values: pd.Series) -> pd.Series:
    """Score values rounded to 10 significant digits: what the analysis compares, so that last-bit floating
    noise (e.g. H-Score = C - 1 exactly when N <= D, computed as 0.99999999999999856 vs 0.99999999999999978) is
    never read as a ranking."""
    return values.map(lambda v: float(f"{v:.10g}"))


def _check(table: pd.DataFrame, columns: list[str] = REQUIRED) -> pd.DataFrame:
    """The ``columns`` of ``table``, with finite numbers in ``value``/``target``, one row per (dataset, model,
    score), and ``ranked`` (:func:`comparable` values) added."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AnalysisError(f"correlation table lacks columns {missing}; it has {list(table.columns)}")
    t = table[columns].copy()
    for col in [c for c in ("value", "target") if c in columns]:
        t[col] = pd.to_numeric(t[col], errors="coerce")
        bad = t.index[~np.isfinite(t[col].to_numpy(dtype=float))]
        if len(bad):
            row = table.loc[bad[0]]
            raise AnalysisError(
                f"correlation table row {bad[0]}: {col}={table.loc[bad[0], col]} is not a finite number "
                f"(dataset={row['dataset']!r}, model={row['model']!r}, score={row['score']!r})"
            )
    t["ranked"] = comparable(t["value"])
    dup = t.duplicated(["dataset", "model", "score"], keep=False)
    if dup.any():
        row = t[dup].iloc[0]
        raise AnalysisError(
            f"correlation table has several rows for dataset={row['dataset']!r}, model={row['model']!r}, "
            f"score={row['score']!r}; keep one per (dataset, model, score)"
        )
    return t


def correlate(table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Correlate scores with a target (accuracy) across models.

    Args:
        table: long table with columns ``dataset, model, score, value, target`` (one row per dataset, model and
            score; ``value`` is the score, ``target`` e.g. test balanced accuracy).
        n_boot: bootstrap resamples of the models for the tau interval; ``seed`` seeds them.

    Returns:
        One row per (dataset, score), then one row per score with ``dataset = "ALL"``, columns ``dataset, score,
        n, tau, tau_lo, tau_hi, wtau, pearson, spearman, regret``. ``tau`` is Kendall tau-b
        (``scipy.stats.kendalltau``), ``wtau`` ``scipy.stats.weightedtau`` with default weights, ``regret`` the
        top-1 regret, ``tau_lo``/``tau_hi`` the 95 % percentile bootstrap interval. In the ``ALL`` rows, ``tau``
        and its interval pool pairs within each dataset (never across), ``n`` is the total number of
        (dataset, model) points, and ``wtau``, ``pearson``, ``spearman`` and ``regret`` are means over datasets.
        A correlation that is undefined (a constant score) is NaN with an :class:`UndefinedCorrelation` warning.
        Score values are compared at 10 significant digits, so floating-point noise is never read as a ranking.
    """
    t = _check(table)
    # a fixed row order makes the seeded bootstrap independent of how the table was assembled
    t = t.assign(model=t["model"].astype(str)).sort_values(["dataset", "score", "model"], kind="stable")
    rows, undefined = [], []
    for (dataset, score), g in t.groupby(["dataset", "score"], sort=True):
        x, y = g["ranked"].to_numpy(float), g["target"].to_numpy(float)
        if len(g) < 2:
            raise AnalysisError(f"dataset {dataset!r}, score {score!r}: {len(g)} model(s); correlations need at least 2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input; reported below instead
            tau = stats.kendalltau(x, y).statistic
            wtau = stats.weightedtau(x, y).statistic
            raw = g["value"].to_numpy(float)
            pearson = stats.pearsonr(raw, y).statistic if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan
            spearman = stats.spearmanr(x, y).statistic
        if not np.isfinite(tau):
            undefined.append(f"{dataset}/{score}")
        lo, hi = bootstrap_tau([(x, y)], n_boot=n_boot, seed=seed)
        rows.append({"dataset": dataset, "score": score, "n": len(g), "tau": float(tau), "tau_lo": lo, "tau_hi": hi,
                     "wtau": float(wtau), "pearson": float(pearson), "spearman": float(spearman),
                     "regret": top1_regret(x, y)})
    if undefined:  # one warning naming every case, not one per (dataset, score)
        warnings.warn(f"tau undefined (constant score or target), reported as NaN, for dataset/score: "
                      f"{', '.join(undefined)}", UndefinedCorrelation, stacklevel=2)
    per = pd.DataFrame(rows, columns=COLUMNS)
    pooled = []
    for score, g in t.groupby("score", sort=True):
        groups = [(d["ranked"].to_numpy(float), d["target"].to_numpy(float)) for _, d in g.groupby("dataset", sort=True)]
        lo, hi = bootstrap_tau(groups, n_boot=n_boot, seed=seed)
        means = per[per["score"] == score][["wtau", "pearson", "spearman", "regret"]].mean()
        pooled.append({"dataset": "ALL", "score": score, "n": len(g), "tau": pooled_tau(groups), "tau_lo": lo,
                       "tau_hi": hi, **{k: float(v) for k, v in means.items()}})
    return pd.concat([per, pd.DataFrame(pooled, columns=COLUMNS)], ignore_index=True)
