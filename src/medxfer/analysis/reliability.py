"""How much the ground truth (fine-tuned test balanced accuracy) can be trusted, and how much of a score's tau
it leaves room for.

Everything here is a function of per-sample correctness: for each model of one dataset, one row per seed
replicate of its selected trial, one column per test sample (the same samples, in the same order, for every
model). Definitions (``M`` models, test set of ``N`` samples, ``B`` bootstrap resamples):

- **Test resample**: a stratified bootstrap of the test set (within each class, as many samples drawn with
  replacement as the class has), so every resample keeps the class sizes that balanced accuracy averages over.
  Resample ``b`` uses the same sample indices for every model and every seed.
- **Seed resample**: where a model has ``S >= 2`` seed replicates, resample ``b`` also draws ``S`` of them with
  replacement (independently per model); a model's accuracy is always the mean over its (drawn) seeds.
- **Observed accuracy** ``a``: per model, balanced accuracy on the whole test set, averaged over its seeds.
  Resampled accuracy ``a_b``: the same on test resample ``b`` (and seed resample ``b``).
- **Accuracy interval**: the percentile interval of ``a_b`` per model.
- **Retest tau** (test-retest reliability of the ground truth ranking): ``bootstrap``, the mean Kendall tau-b
  between the rankings of two independent resamples (``a_{2j}`` vs ``a_{2j+1}``, over ``B / 2`` pairs): how
  much two test sets of this size would agree; ``seeds``, the mean tau-b between the rankings of two seed
  replicates on the whole test set, over every pair of seeds that all models have (NaN with fewer than two).
- **Ceiling**: the mean Kendall tau-b between the observed ranking ``a`` and the resampled rankings ``a_b``.
  A perfect score ranks models by their true accuracy; the observed ranking is one noisy draw of it, and the
  bootstrap estimates how far such a draw falls from the ranking it was drawn from. So the ceiling is the tau a
  perfect score can expect against this ground truth: ~1 when the test set separates the models, lower as the
  test-set (and seed) noise grows. A score whose tau approaches the ceiling is as good as this ground truth can
  show.
- **One-level interval** of a score's tau: models resampled with replacement, accuracies fixed (as
  :func:`medxfer.analysis.correlation.bootstrap_tau`, with the same draws for the same seed).
  **Two-level interval**: for draw ``b``, the same models as the one-level draw ``b`` and the accuracies of
  test (and seed) resample ``b``: tau-b of (score, ``a_b``) over the drawn models. A resampled ground truth is
  one noise level further from the truth than the observed one, which pulls these taus toward 0 by about the
  ``attenuation`` ``d`` = mean over draws of (one-level tau - two-level tau); the draws are shifted back by
  ``d`` (clipped to [-1, 1]) so that the interval shows the spread the test set adds, not that bias. Its
  percentile interval is then widened where needed to contain the one-level interval: test-sample noise adds
  to the uncertainty of the models' draw and cannot remove it (a finite bootstrap of a discrete statistic can
  otherwise put a percentile just inside). Both are 95 % percentile intervals by default.
- **Verdict**: "indistinguishable from random" when the two-level interval covers 0; "above random" when it
  lies above 0, "below random" when below; "undefined" when the interval is NaN (e.g. a constant score).

Pooled over datasets (``dataset = "ALL"``), taus count pairs only within each dataset, as
:func:`medxfer.analysis.correlation.pooled_tau` does; the seed retest tau is the mean over datasets.
Accuracies and scores are compared at 10 significant digits (as everywhere in the analysis), so that equal
balanced accuracies computed along different paths are ties, not a ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from medxfer.analysis.correlation import _pair_counts, _tau_b

RANDOM = "indistinguishable from random"
ABOVE = "above random"
BELOW = "below random"
UNDEFINED = "undefined"

INTERVAL_COLUMNS = ["dataset", "score", "n", "tau", "tau1_lo", "tau1_hi", "tau2_lo", "tau2_hi", "attenuation", "ceiling",
                    "verdict"]


def _sig10(a: np.ndarray) -> np.ndarray:
    """Values rounded to 10 significant digits, exactly as :func:`medxfer.analysis.correlation.comparable`."""
    a = np.asarray(a, dtype=float)
    return np.array([float(f"{v:.10g}") for v in a.ravel()]).reshape(a.shape)


@dataclass(frozen=True)
class GroundTruth:
    """Per-sample correctness of the models of one dataset.

    Shape: ``labels``: (N,) class indices 0..C-1; ``correct[m]``: (S_m, N) bool, one row per seed replicate of
    model ``models[m]``; ``seeds[m]``: the S_m seed labels of those rows.
    """

    models: tuple[str, ...]
    labels: np.ndarray
    correct: tuple[np.ndarray, ...]
    seeds: tuple[tuple, ...]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.models) != len(self.correct) or len(self.models) != len(self.seeds):
            raise ValueError(f"{len(self.models)} models but {len(self.correct)} correctness arrays and "
                             f"{len(self.seeds)} seed lists")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models listed twice: {sorted(m for m in self.models if list(self.models).count(m) > 1)}")
        for model, c, s in zip(self.models, self.correct, self.seeds):
            if c.ndim != 2 or c.shape[1] != n or c.shape[0] != len(s) or c.shape[0] == 0:
                raise ValueError(f"model {model!r}: correctness of shape {c.shape} for {len(s)} seed(s) and "
                                 f"{n} test samples; expected ({max(len(s), 1)}, {n})")

    @classmethod
    def from_predictions(cls, entries: Sequence[tuple[str, object, np.ndarray, np.ndarray, np.ndarray]]) -> "GroundTruth":
        """From ``(model, seed, ids, labels, probs)`` per fine-tune run (``probs``: (N, C)). Samples are matched
        by id; every run must hold the same ids with the same labels (one test set), else ValueError names the
        run that differs."""
        if not entries:
            raise ValueError("no predictions given")
        order = None
        ref_ids = ref_labels = None
        rows: dict[str, list[tuple[object, np.ndarray]]] = {}
        for model, seed, ids, labels, probs in entries:
            ids, labels, probs = np.asarray(ids).astype(str), np.asarray(labels), np.asarray(probs)
            if probs.ndim != 2 or len(probs) != len(ids) or len(labels) != len(ids):
                raise ValueError(f"model {model!r} seed {seed!r}: {len(ids)} ids, {len(labels)} labels and probs "
                                 f"of shape {probs.shape}; expected (N,), (N,), (N, C)")
            if len(set(ids)) != len(ids):
                raise ValueError(f"model {model!r} seed {seed!r}: sample ids are not unique")
            if order is None:
                order = np.argsort(ids, kind="stable")
                ref_ids, ref_labels = ids[order], labels[order]
            this = np.argsort(ids, kind="stable")
            if len(ids) != len(ref_ids) or not np.array_equal(ids[this], ref_ids):
                raise ValueError(f"model {model!r} seed {seed!r}: its test set ({len(ids)} samples) is not the one of "
                                 f"model {entries[0][0]!r} seed {entries[0][1]!r} ({len(ref_ids)} samples); "
                                 "every model of a dataset must be tested on the same samples")
            if not np.array_equal(labels[this], ref_labels):
                raise ValueError(f"model {model!r} seed {seed!r}: same sample ids as model {entries[0][0]!r} but "
                                 "other labels")
            correct = probs[this].argmax(axis=1) == labels[this]
            seeds = rows.setdefault(str(model), [])
            if any(s == seed for s, _ in seeds):
                raise ValueError(f"model {model!r}: seed {seed!r} given twice")
            seeds.append((seed, correct))
        models = tuple(sorted(rows))
        return cls(models=models, labels=ref_labels.astype(np.int64),
                   correct=tuple(np.stack([c for _, c in rows[m]]) for m in models),
                   seeds=tuple(tuple(s for s, _ in rows[m]) for m in models))


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Mean recall over the classes present, from per-sample correctness, optionally on resamples.

    Shape: ``correct``: (R, N) bool; ``labels``: (N,); ``counts``: (B, N) how often each sample is drawn
    (None: each once); result: (B, R) (B = 1 without ``counts``).
    """
    correct = np.asarray(correct, dtype=float)
    counts = np.ones((1, correct.shape[1])) if counts is None else np.asarray(counts, dtype=float)
    recalls = []
    for k in np.unique(labels):
        mask = labels == k
        support = counts[:, mask].sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append((counts[:, mask] @ correct[:, mask].T) / support)
    return np.nanmean(np.stack(recalls), axis=0)


def stratified_counts(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, N) draw counts of a stratified bootstrap: each class resampled to its own size."""
    labels = np.asarray(labels)
    n = len(labels)
    counts = np.zeros((n_boot, n), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        picks = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, picks.shape), picks), 1)
    return counts


@dataclass(frozen=True)
class Resampled:
    """The ground truth of one dataset and its bootstrap.

    Shape: ``observed``: (M,) seed-mean balanced accuracy; ``by_seed``: per model a dict seed -> accuracy on the
    whole test set; ``boot``: (B, M) accuracies on test (and seed) resample b.
    """

    models: tuple[str, ...]
    observed: np.ndarray
    by_seed: tuple[dict, ...]
    boot: np.ndarray
    n_test: int


def resample(gt: GroundTruth, *, n_boot: int = 1000, seed: int = 0) -> Resampled:
    """The observed and bootstrapped accuracies of ``gt`` (see the module docstring); seeded."""
    if n_boot < 2:
        raise ValueError(f"n_boot={n_boot}; the bootstrap needs at least 2 resamples")
    rng = np.random.default_rng([seed, 13])
    counts = stratified_counts(gt.labels, n_boot, rng)
    observed, by_seed, boot = [], [], []
    for c, seeds in zip(gt.correct, gt.seeds):
        full = balanced_accuracy(c, gt.labels)[0]  # (S,)
        resampled = balanced_accuracy(c, gt.labels, counts)  # (B, S)
        if len(seeds) > 1:
            picks = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
            resampled = np.take_along_axis(resampled, picks, axis=1)
        observed.append(full.mean())
        by_seed.append(dict(zip(seeds, full.tolist())))
        boot.append(resampled.mean(axis=1))
    return Resampled(gt.models, _sig10(np.array(observed)), tuple(by_seed), _sig10(np.stack(boot, axis=1)), len(gt.labels))


def accuracy_intervals(r: Resampled, *, level: float = 0.95) -> pd.DataFrame:
    """Per model: ``accuracy`` (observed), ``acc_lo``/``acc_hi`` (percentile interval), ``n_seeds``."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(r.boot, alpha, axis=0), np.quantile(r.boot, 1 - alpha, axis=0)
    return pd.DataFrame({"model": list(r.models), "accuracy": r.observed, "acc_lo": lo, "acc_hi": hi,
                         "n_seeds": [len(s) for s in r.by_seed]})


def _mean_tau(s, nx, ny) -> float:
    taus = _tau_b(np.asarray(s), np.asarray(nx), np.asarray(ny))
    taus = taus[np.isfinite(taus)]
    return float(taus.mean()) if len(taus) else float("nan")


def _sum_counts(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    return tuple(sum(p[i] for p in parts) for i in range(3))


def ceiling(rs: Sequence[Resampled]) -> float:
    """Mean tau-b between the observed and the resampled accuracy rankings; several datasets: pooled (pairs
    within each dataset). All must have the same number of resamples."""
    return _mean_tau(*_sum_counts([_pair_counts(np.broadcast_to(r.observed, r.boot.shape), r.boot) for r in rs]))


def retest_tau_bootstrap(rs: Sequence[Resampled]) -> float:
    """Mean tau-b between the rankings of independent resamples 2j and 2j+1 (pooled over ``rs``)."""
    parts = []
    for r in rs:
        half = len(r.boot) // 2
        parts.append(_pair_counts(r.boot[0:2 * half:2], r.boot[1:2 * half:2]))
    return _mean_tau(*_sum_counts(parts))


def retest_tau_seeds(r: Resampled) -> tuple[float, int]:
    """Mean tau-b between the rankings of two seed replicates over the seeds every model has, and how many
    such seeds there are (NaN with fewer than 2)."""
    common = set(r.by_seed[0]).intersection(*r.by_seed[1:]) if r.by_seed else set()
    seeds = sorted(common, key=str)
    if len(seeds) < 2:
        return float("nan"), len(seeds)
    acc = {s: _sig10(np.array([d[s] for d in r.by_seed])) for s in seeds}
    parts = [_pair_counts(acc[a], acc[b]) for a, b in combinations(seeds, 2)]
    return _mean_tau(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]), np.array([p[2] for p in parts])), len(seeds)


@dataclass(frozen=True)
class TauInterval:
    """A score's tau against the observed ground truth, its one- and two-level intervals, the attenuation the
    two-level draws were corrected by, and the verdict."""

    tau: float
    one_level: tuple[float, float]
    two_level: tuple[float, float]
    attenuation: float
    verdict: str


def _percentile(taus: np.ndarray, level: float) -> tuple[float, float]:
    taus = taus[np.isfinite(taus)]
    if len(taus) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(taus, alpha)), float(np.quantile(taus, 1 - alpha))


def verdict(lo: float, hi: float) -> str:
    """The plain reading of a tau interval: does it exclude a random ranking (tau = 0)?"""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return UNDEFINED
    if lo > 0:
        return ABOVE
    if hi < 0:
        return BELOW
    return RANDOM


def score_tau_interval(scores: Sequence[np.ndarray], rs: Sequence[Resampled], *, n_boot: int | None = None,
                       seed: int = 0, level: float = 0.95) -> TauInterval:
    """Tau-b of a score against the ground truth with its one-level (models) and two-level (models and test
    samples) bootstrap intervals; several datasets: pooled.

    Shape: ``scores[d]``: (M_d,) the score of each model of ``rs[d].models``, in that order. ``n_boot``
    defaults to the number of resamples in ``rs`` and may not exceed it. The model draws are those of
    :func:`medxfer.analysis.correlation.bootstrap_tau` for the same ``seed`` and group order.
    """
    B = len(rs[0].boot) if n_boot is None else n_boot
    if any(len(r.boot) < B for r in rs):
        raise ValueError(f"n_boot={B} exceeds the {min(len(r.boot) for r in rs)} ground-truth resamples")
    rng = np.random.default_rng(seed)
    observed, one, two = [], [], []
    for x, r in zip(scores, rs):
        x = _sig10(np.asarray(x, float))
        if len(x) != len(r.models):
            raise ValueError(f"{len(x)} score values for {len(r.models)} models")
        idx = rng.integers(0, len(x), size=(B, len(x)))
        observed.append(_pair_counts(x, r.observed))
        one.append(_pair_counts(x[idx], r.observed[idx]))
        two.append(_pair_counts(x[idx], np.take_along_axis(r.boot[:B], idx, axis=1)))
    tau = float(_tau_b(*(np.asarray(v) for v in _sum_counts(observed))))
    tau1, tau2 = _tau_b(*_sum_counts(one)), _tau_b(*_sum_counts(two))
    both = np.isfinite(tau1) & np.isfinite(tau2)
    attenuation = float(np.mean(tau1[both] - tau2[both])) if both.any() else float("nan")
    lo1, hi1 = _percentile(tau1, level)
    lo2, hi2 = _percentile(np.clip(tau2 + (attenuation if np.isfinite(attenuation) else 0.0), -1.0, 1.0), level)
    if np.isfinite(lo1) and np.isfinite(lo2):  # test-sample noise adds to the models' uncertainty, never removes it
        lo2, hi2 = min(lo1, lo2), max(hi1, hi2)
    return TauInterval(tau, (lo1, hi1), (lo2, hi2), attenuation, verdict(lo2, hi2))


def reliability_tables(truths: Mapping[str, GroundTruth], table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The reliability of every dataset's ground truth, and every score's tau intervals next to the ceiling.

    Args:
        truths: dataset -> :class:`GroundTruth` (datasets without per-sample data are simply absent).
        table: the long correlation table (``dataset, model, score, value``; other columns ignored); a score is
            correlated over the models that have both a value and per-sample data.

    Returns:
        ``(reliability, intervals, accuracy)``: ``reliability`` one row per dataset and ``ALL``: ``dataset,
        n_models, n_test, n_seeds, ceiling, retest_tau_bootstrap, retest_tau_seeds``; ``intervals`` columns
        :data:`INTERVAL_COLUMNS`; ``accuracy`` per (dataset, model) ``accuracy, acc_lo, acc_hi, n_seeds``.
    """
    return resampled_tables({d: resample(truths[d], n_boot=n_boot, seed=seed) for d in sorted(truths)}, table,
                            seed=seed, level=level)


def resampled_tables(rs: Mapping[str, Resampled], table: pd.DataFrame, *, seed: int = 0,
                     level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`reliability_tables` from ground truths already resampled (dataset -> :class:`Resampled`), by this
    module's bootstrap or another (e.g. :mod:`medxfer.analysis.parametric` for published accuracies)."""
    datasets = sorted(rs)
    rel, acc = [], []
    for d in datasets:
        r = rs[d]
        seeds_tau, n_common = retest_tau_seeds(r)
        rel.append({"dataset": d, "n_models": len(r.models), "n_test": r.n_test, "n_seeds": n_common,
                    "ceiling": ceiling([r]), "retest_tau_bootstrap": retest_tau_bootstrap([r]),
                    "retest_tau_seeds": seeds_tau})
        acc.append(accuracy_intervals(r, level=level).assign(dataset=d))
    if len(datasets) > 1:
        seed_taus = [row["retest_tau_seeds"] for row in rel if np.isfinite(row["retest_tau_seeds"])]
        rel.append({"dataset": "ALL", "n_models": sum(len(r.models) for r in rs.values()),
                    "n_test": sum(r.n_test for r in rs.values()), "n_seeds": min(row["n_seeds"] for row in rel),
                    "ceiling": ceiling(list(rs.values())), "retest_tau_bootstrap": retest_tau_bootstrap(list(rs.values())),
                    "retest_tau_seeds": float(np.mean(seed_taus)) if seed_taus else float("nan")})
    reliability = pd.DataFrame(rel, columns=["dataset", "n_models", "n_test", "n_seeds", "ceiling",
                                             "retest_tau_bootstrap", "retest_tau_seeds"])
    rows = []
    t = table[table["dataset"].isin(datasets)]
    for score in sorted(t["score"].unique()):
        groups = []
        for d in datasets:
            g = t[(t["dataset"] == d) & (t["score"] == score)].set_index("model")["value"]
            keep = [i for i, m in enumerate(rs[d].models) if m in g.index]
            if len(keep) < 2:
                continue
            r = rs[d]
            sub = Resampled(tuple(r.models[i] for i in keep), r.observed[keep], tuple(r.by_seed[i] for i in keep),
                            r.boot[:, keep], r.n_test)
            groups.append((d, g.loc[list(sub.models)].to_numpy(float), sub))
        for d, x, sub in groups:
            iv = score_tau_interval([x], [sub], seed=seed, level=level)
            rows.append(_interval_row(d, score, len(x), iv, ceiling([sub])))
        if len(groups) > 1:
            iv = score_tau_interval([x for _, x, _ in groups], [s for _, _, s in groups], seed=seed, level=level)
            rows.append(_interval_row("ALL", score, sum(len(x) for _, x, _ in groups), iv,
                                      ceiling([s for _, _, s in groups])))
    intervals = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    accuracy = pd.concat(acc, ignore_index=True)[["dataset", "model", "accuracy", "acc_lo", "acc_hi", "n_seeds"]] \
        if acc else pd.DataFrame(columns=["dataset", "model", "accuracy", "acc_lo", "acc_hi", "n_seeds"])
    return reliability, intervals, accuracy


def _interval_row(dataset: str, score: str, n: int, iv: TauInterval, ceil: float) -> dict:
    return {"dataset": dataset, "score": score, "n": n, "tau": iv.tau, "tau1_lo": iv.one_level[0],
            "tau1_hi": iv.one_level[1], "tau2_lo": iv.two_level[0], "tau2_hi": iv.two_level[1], "attenuation": iv.attenuation, "ceiling": ceil,
            "verdict": iv.verdict}
