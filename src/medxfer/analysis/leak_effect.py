"""What a published split's leak does to a study's conclusions: accuracies and taus on every test sample beside
those on the test samples that do not leak from training.

A fine-tune run flags, in its test predictions, the samples that leak (an image byte-identical to a training or
validation image, or a group shared with either: :mod:`medxfer.data.leaks`). For each dataset whose selected
runs flag any, the same models are measured twice: on the whole test set as published, and on its clean samples
only. The accuracy intervals come from the per-sample bootstrap (:mod:`medxfer.analysis.reliability`), the tau
intervals from the bootstrap over models (:func:`medxfer.analysis.correlation.correlate`), so both columns carry
the same kind of uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from medxfer.analysis.correlation import correlate
from medxfer.analysis.reliability import GroundTruth, reliability_tables

#: ``predictions(run_id)``: a fine-tune run's test predictions (``ids``, ``labels``, ``probs``, ``leaked``), or None.
PredictionsOf = Callable[[str], Any]


@dataclass
class LeakEffect:
    """Per leaking dataset: ``accuracy`` (dataset, model, n_test, accuracy, acc_lo, acc_hi, n_clean,
    accuracy_clean, clean_lo, clean_hi) and ``tau`` (dataset, score, n, tau, tau_lo, tau_hi, tau_clean,
    tau_clean_lo, tau_clean_hi); empty when no selected run flags a leaked test sample. ``notes``: datasets left
    out and why."""

    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)
    tau: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def leak_effect(replicates: pd.DataFrame, table: pd.DataFrame, predictions: PredictionsOf, *, n_boot: int = 1000,
                seed: int = 0) -> LeakEffect:
    """The leak's effect for each dataset of ``table`` (the long correlation table: dataset, model, score, value,
    target) whose selected runs (``replicates``: model, dataset, seed, run_id) flag leaked test samples."""
    out = LeakEffect()
    truths, clean_targets = {}, {}
    for dataset in sorted(table["dataset"].unique()):
        models = set(table.loc[table["dataset"] == dataset, "model"])
        runs = replicates[(replicates["dataset"] == dataset) & replicates["model"].isin(models)]
        preds = [(r["model"], r["seed"], predictions(r["run_id"])) for _, r in runs.iterrows()]
        flagged = [p for _, _, p in preds if p is not None and p.leaked is not None and p.leaked.any()]
        if not flagged:
            continue
        if len(flagged) < len(preds) or {m for m, _, _ in preds} != models:
            out.notes.append(f"dataset {dataset}: not every selected run flags its leaked test samples (runs from "
                             "before they were flagged); the clean-test comparison is left out")
            continue
        whole = GroundTruth.from_predictions([(m, s, p.ids, p.labels, p.probs) for m, s, p in preds])
        clean = [(m, s, p.clean()) for m, s, p in preds]
        truths[dataset] = whole
        truths[_clean(dataset)] = GroundTruth.from_predictions([(m, s, c.ids, c.labels, c.probs) for m, s, c in clean])
        per_model: dict[str, list[float]] = {}
        for m, _, c in clean:
            per_model.setdefault(m, []).append(c.balanced_accuracy())
        clean_targets[dataset] = {m: sum(v) / len(v) for m, v in per_model.items()}
    if not truths:
        return out
    rows = table[table["dataset"].isin(clean_targets)]
    clean_rows = rows.assign(dataset=rows["dataset"].map(_clean),
                             target=[clean_targets[d][m] for d, m in zip(rows["dataset"], rows["model"])])
    both = pd.concat([rows, clean_rows], ignore_index=True)
    _, _, accuracy = reliability_tables(truths, both, n_boot=n_boot, seed=seed)
    tau = correlate(both, n_boot=n_boot, seed=seed)
    tau = tau[tau["dataset"] != "ALL"]
    n_test = {d: len(truths[d].labels) for d in truths}
    out.accuracy = _side_by_side(accuracy.assign(n_test=accuracy["dataset"].map(n_test)), ["model"],
                                 {"accuracy": "accuracy_clean", "acc_lo": "clean_lo", "acc_hi": "clean_hi",
                                  "n_test": "n_clean"})
    out.tau = _side_by_side(tau, ["score"], {"tau": "tau_clean", "tau_lo": "tau_clean_lo", "tau_hi": "tau_clean_hi"},
                            keep=["n"])
    return out


def _clean(dataset: str) -> str:
    return f"{dataset} [clean test]"


def _side_by_side(frame: pd.DataFrame, keys: list[str], renamed: dict[str, str], keep: list[str] = ()) -> pd.DataFrame:
    """Rows of ``<dataset>`` and ``<dataset> [clean test]`` as one row per dataset and key, clean columns renamed."""
    is_clean = frame["dataset"].str.endswith(" [clean test]")
    whole = frame.loc[~is_clean, ["dataset", *keys, *keep, *renamed]]
    clean = frame.loc[is_clean, ["dataset", *keys, *renamed]].rename(columns=renamed)
    clean["dataset"] = clean["dataset"].str.removesuffix(" [clean test]")
    return whole.merge(clean, on=["dataset", *keys], how="inner").reset_index(drop=True)
