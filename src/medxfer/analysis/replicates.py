"""Seed replicates of the fine-tuning ground truth: averaged per (model, dataset) for the correlations, kept
apart for the reliability analysis (:mod:`medxfer.analysis.reliability`).

Input everywhere: a DataFrame of fine-tune runs with columns ``model, dataset, seed, trial, accuracy`` (one row
per run), already restricted to the selected trial of each (model, dataset).
"""

from __future__ import annotations

import pandas as pd

from medxfer.analysis.correlation import AnalysisError

REQUIRED = ["model", "dataset", "seed", "trial", "accuracy"]


def _plain(value):
    """A numpy scalar as the Python value it holds (for messages)."""
    return value.item() if hasattr(value, "item") else value


def check_replicates(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the required columns and numeric ``accuracy``; one trial per (model, dataset) and one run
    per (model, dataset, seed), else :class:`AnalysisError` naming the cell."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise AnalysisError(f"replicate table lacks columns {missing}; it has {list(runs.columns)}")
    t = runs.copy()
    t["accuracy"] = pd.to_numeric(t["accuracy"], errors="coerce")
    if t["accuracy"].isna().any():
        row = t[t["accuracy"].isna()].iloc[0]
        raise AnalysisError(f"replicate of model={row['model']!r} dataset={row['dataset']!r} seed={_plain(row['seed'])!r}: "
                            f"accuracy {runs.loc[row.name, 'accuracy']!r} is not a number")
    trials = t.groupby(["model", "dataset"])["trial"].nunique()
    if (trials > 1).any():
        model, dataset = trials[trials > 1].index[0]
        raise AnalysisError(f"model={model!r} dataset={dataset!r}: replicates of several trials "
                            f"{sorted(_plain(v) for v in t[(t.model == model) & (t.dataset == dataset)]['trial'].unique())}; select one "
                            "trial per (model, dataset) first")
    dup = t.duplicated(["model", "dataset", "seed"], keep=False)
    if dup.any():
        row = t[dup].iloc[0]
        raise AnalysisError(f"model={row['model']!r} dataset={row['dataset']!r} seed={_plain(row['seed'])!r}: several runs; "
                            "keep one per seed (the newest)")
    return t


def average_replicates(runs: pd.DataFrame) -> pd.DataFrame:
    """The ground truth: per (dataset, model) the mean ``accuracy`` over seeds, with ``accuracy_sd`` (sample
    standard deviation, NaN for one seed), ``n_seeds`` and the ``trial``."""
    t = check_replicates(runs)
    g = t.groupby(["dataset", "model"], sort=True)
    out = g.agg(trial=("trial", "first"), accuracy=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
                n_seeds=("seed", "nunique")).reset_index()
    return out[["dataset", "model", "trial", "accuracy", "accuracy_sd", "n_seeds"]]


def replicate_matrix(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The replicates of one dataset kept apart: index model, one column per seed (NaN where a model lacks
    that seed)."""
    t = check_replicates(runs)
    t = t[t["dataset"] == dataset]
    if len(t) == 0:
        raise AnalysisError(f"no replicates for dataset {dataset!r}; datasets: {sorted(runs['dataset'].unique())}")
    return t.pivot(index="model", columns="seed", values="accuracy").sort_index()
