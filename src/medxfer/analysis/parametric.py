"""A noise ceiling for tables that publish only aggregate accuracies: the parametric twin of the bootstrap in
:mod:`medxfer.analysis.reliability`.

A model's balanced accuracy on a test set of ``n_k`` samples of class ``k`` (``k = 1..C``) is the mean of its
per-class recalls, ``a = (1/C) sum_k X_k / n_k``, where ``X_k``, the correctly classified samples of class
``k``, is binomial, ``X_k ~ Bin(n_k, r_k)``. The stratified bootstrap of :mod:`~medxfer.analysis.reliability`
draws exactly this law (``n_k`` samples of class ``k`` with replacement, each correct with the observed recall
``r_k`` as its probability). A published table gives ``a`` and the test set's class counts, not the recalls nor
which sample each model got right, so two assumptions stand in for the missing data:

- **Recalls**: ``r_k = a`` for every class, unless per-class recalls are given. Then
  ``Var(a*) = a (1 - a) / C^2 * sum_k 1 / n_k``. With equal class sizes no recalls of mean ``a`` vary more
  (``r (1 - r)`` is concave), so the noise is not understated; with unequal sizes it is close to the largest.
- **Independence**: each model is drawn independently. Models that err on the same images (fine-tuned models
  of one dataset do) differ less from one test set to another than independent draws, so their per-sample
  predictions would usually give a higher ceiling than this one: read it as a conservative estimate.

Resample ``b`` of model ``m``: ``a*_bm = (1/C) sum_k X_bmk / n_k``, ``X_bmk ~ Bin(n_k, r_mk)`` independent.
From ``a`` and ``a*`` everything of :mod:`~medxfer.analysis.reliability` follows unchanged: accuracy intervals
(percentiles of ``a*_bm``), the **ceiling** (mean Kendall tau-b between the ranking by ``a`` and the ranking by
``a*_b``: the tau a perfect score can expect against this ground truth), its band (percentiles of those taus),
the retest tau (two independent resamples), and the two-level intervals of each score's tau.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medxfer.analysis.correlation import _pair_counts, _tau_b
from medxfer.analysis.reliability import Resampled, _sig10, resampled_tables


def _counts(class_counts) -> np.ndarray:
    n = np.asarray(class_counts)
    if n.ndim != 1 or len(n) == 0 or not np.issubdtype(n.dtype, np.integer) or (n < 1).any():
        raise ValueError(f"class_counts={class_counts!r}; expected a 1-d array of whole numbers >= 1, one per "
                         "class of the test set")
    return n.astype(np.int64)


def binomial_accuracies(accuracy, class_counts, *, recalls=None, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Balanced accuracies re-measured on ``n_boot`` test sets of the same class counts (see the module
    docstring): ``a*_bm = (1/C) sum_k X_bmk / n_k`` with ``X_bmk ~ Bin(n_k, r_mk)``, ``r_mk = accuracy[m]`` unless
    ``recalls`` are given. Seeded: the same arguments give the same draws.

    Shape:
        - accuracy: (M,) balanced accuracies in [0, 1].
        - class_counts: (C,) test samples per class, whole numbers >= 1.
        - recalls: (M, C) per-class recalls in [0, 1], or None.
        - result: (B, M), B = ``n_boot``.
    """
    a = np.asarray(accuracy, dtype=float)
    n = _counts(class_counts)
    if a.ndim != 1 or not np.isfinite(a).all() or ((a < 0) | (a > 1)).any():
        raise ValueError(f"accuracy={accuracy!r}; expected a 1-d array of balanced accuracies in [0, 1]")
    if n_boot < 2:
        raise ValueError(f"n_boot={n_boot}; the resampling needs at least 2 draws")
    r = np.broadcast_to(a[:, None], (len(a), len(n))) if recalls is None else np.asarray(recalls, dtype=float)
    if r.shape != (len(a), len(n)) or not np.isfinite(r).all() or ((r < 0) | (r > 1)).any():
        raise ValueError(f"recalls of shape {np.shape(recalls)}; expected ({len(a)}, {len(n)}) values in [0, 1]")
    rng = np.random.default_rng([seed, 17])
    correct = rng.binomial(n[None, None, :], r[None, :, :], size=(n_boot, len(a), len(n)))
    return (correct / n).mean(axis=2)


def parametric_resample(models: Sequence[str], accuracy, class_counts, *, recalls=None, n_boot: int = 1000,
                        seed: int = 0) -> Resampled:
    """The published ground truth of one dataset as :class:`~medxfer.analysis.reliability.Resampled`: observed
    ``accuracy`` and its :func:`binomial_accuracies` draws, for every function of that module.

    Shape: ``models``: (M,) names; ``accuracy``: (M,); ``class_counts``: (C,); ``recalls``: (M, C) or None.
    """
    a = np.asarray(accuracy, dtype=float)
    if len(models) != len(a) or len(set(models)) != len(models):
        raise ValueError(f"{len(models)} model names (unique: {len(set(models))}) for {len(a)} accuracies")
    boot = binomial_accuracies(a, class_counts, recalls=recalls, n_boot=n_boot, seed=seed)
    return Resampled(tuple(models), _sig10(a), tuple({"published": float(v)} for v in a), _sig10(boot),
                     int(_counts(class_counts).sum()))


def ceiling_taus(r: Resampled) -> np.ndarray:
    """Kendall tau-b between the observed ranking and each resampled one: the ceiling is their mean, its band
    their percentiles. Shape: (B,) (NaN where a ranking is all ties)."""
    return _tau_b(*_pair_counts(np.broadcast_to(r.observed, r.boot.shape), r.boot))


def parametric_ceiling(accuracy, class_counts, *, recalls=None, n_boot: int = 1000, seed: int = 0) -> float:
    """The tau a perfect score can expect against published accuracies measured on a test set of these class
    counts: the mean over resamples ``b`` of tau-b(``accuracy``, ``a*_b``) (module docstring). ~1 for widely
    separated accuracies on a large test set, ~0 for equal ones.

    Shape: ``accuracy``: (M,), M >= 2; ``class_counts``: (C,); ``recalls``: (M, C) or None; result: scalar.
    """
    a = np.asarray(accuracy, dtype=float)
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"accuracy={accuracy!r}; a ranking needs at least 2 models")
    taus = ceiling_taus(parametric_resample([str(i) for i in range(len(a))], a, class_counts, recalls=recalls,
                                            n_boot=n_boot, seed=seed))
    taus = taus[np.isfinite(taus)]
    return float(taus.mean()) if len(taus) else float("nan")


def published_tables(table: pd.DataFrame, class_counts: Mapping[str, Sequence[int]], *, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The reliability of published accuracies and every score's tau intervals next to the ceiling, as
    :func:`medxfer.analysis.reliability.reliability_tables` gives them for a study with per-sample predictions.

    Args:
        table: the long correlation table ``dataset, model, score, value, target`` (``target``: the published
            balanced accuracy; one value per (dataset, model)).
        class_counts: dataset -> test samples per class; every dataset of ``table`` needs one.

    Returns:
        ``(reliability, intervals, accuracy)``: ``reliability`` one row per dataset and ``ALL``: ``dataset,
        n_models, n_test, class_counts, ceiling, ceiling_lo, ceiling_hi, retest_tau``; ``intervals`` and
        ``accuracy`` as :func:`~medxfer.analysis.reliability.reliability_tables`' (``n_seeds`` 1).
    """
    missing = sorted(set(table["dataset"]) - set(class_counts))
    if missing:
        raise ValueError(f"no test-set class counts for dataset(s) {missing}; given for {sorted(class_counts)}")
    rs = {}
    for d, g in table.groupby("dataset", sort=True):
        per_model = g.groupby("model")["target"].agg(["min", "max"])
        differs = per_model.index[~np.isclose(per_model["min"], per_model["max"], rtol=0, atol=1e-12)]
        if len(differs):
            raise ValueError(f"dataset {d!r}: model {differs[0]!r} has several accuracies "
                             f"({per_model.loc[differs[0], 'min']} .. {per_model.loc[differs[0], 'max']})")
        rs[d] = parametric_resample(list(per_model.index), per_model["min"].to_numpy(float), class_counts[d],
                                    n_boot=n_boot, seed=seed)
    reliability, intervals, accuracy = resampled_tables(rs, table, seed=seed, level=level)
    alpha = (1 - level) / 2
    bands = {}
    for d, r in rs.items():
        taus = ceiling_taus(r)
        taus = taus[np.isfinite(taus)]
        bands[d] = (float(np.quantile(taus, alpha)), float(np.quantile(taus, 1 - alpha))) if len(taus) else (np.nan, np.nan)
    if len(rs) > 1:
        pooled = _tau_b(*(sum(p[i] for p in (_pair_counts(np.broadcast_to(r.observed, r.boot.shape), r.boot)
                                             for r in rs.values())) for i in range(3)))
        pooled = pooled[np.isfinite(pooled)]
        bands["ALL"] = (float(np.quantile(pooled, alpha)), float(np.quantile(pooled, 1 - alpha)))
    counts = {d: "/".join(str(int(v)) for v in class_counts[d]) for d in rs}
    counts["ALL"] = ""
    reliability = reliability.assign(
        class_counts=reliability["dataset"].map(counts),
        ceiling_lo=reliability["dataset"].map(lambda d: bands[d][0]),
        ceiling_hi=reliability["dataset"].map(lambda d: bands[d][1]),
    ).rename(columns={"retest_tau_bootstrap": "retest_tau"})
    reliability = reliability[["dataset", "n_models", "n_test", "class_counts", "ceiling", "ceiling_lo", "ceiling_hi",
                               "retest_tau"]]
    return reliability, intervals, accuracy
