"""How far the ground truth can be trusted: from the selected trials' seed replicates and their per-sample test
predictions, accuracy intervals, retest tau, the ceiling and two-level tau intervals (definitions:
:mod:`medxfer.analysis.reliability`), as metrics, tables and a figure for the analysis run to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from medxfer.analysis.baselines import dispersion
from medxfer.analysis.figures import save_figure, tau_heatmap
from medxfer.analysis.reliability import GroundTruth, reliability_tables
from medxfer.analysis.replicates import check_replicates

#: ``predictions(run_id)``: a fine-tune run's per-sample test predictions (``ids``, ``labels``, ``probs``), or None
#: when the run predates them.
PredictionsOf = Callable[[str], Any]


@dataclass
class Reliability:
    """What :func:`ground_truth_reliability` found: the tables (empty without per-sample data), the metrics and
    tables to log, the figures it wrote and, per dataset left out, why."""

    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    accuracy: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table, logged as tables/<name>.csv


def n_params(selected: pd.DataFrame) -> dict[str, float]:
    """Backbone parameter counts per model from the fine-tune runs' ``n_params`` param (older runs lack it)."""
    if "params.n_params" not in selected.columns:
        return {}
    counts = pd.to_numeric(selected["params.n_params"], errors="coerce")
    return {m: float(v) for m, v in zip(selected["tags.model"], counts) if pd.notna(v)}


def replicates_of(selected: pd.DataFrame) -> pd.DataFrame:
    """The selected trials' runs (one per seed replicate, as :func:`medxfer.results.manifest_tables` selects them) as
    the table :mod:`medxfer.analysis.replicates` checks: model, dataset, seed, trial, accuracy, run id."""
    if len(selected) == 0:
        return pd.DataFrame(columns=["model", "dataset", "seed", "trial", "accuracy", "run_id"])
    seed = selected["tags.seed"] if "tags.seed" in selected.columns else selected.get("params.finetune.seed")
    trial = selected["tags.trial"] if "tags.trial" in selected.columns else selected.get("params.trial")
    table = pd.DataFrame({"model": selected["tags.model"], "dataset": selected["tags.dataset"],
                          "seed": pd.Series(seed, index=selected.index).fillna("").astype(str),
                          "trial": pd.Series(trial, index=selected.index).astype(str),
                          "accuracy": selected["metrics.test/bal_acc"], "run_id": selected["run_id"]})
    return check_replicates(table.drop_duplicates(["model", "dataset", "seed"], keep="first"))


def ground_truth_reliability(study: str, selected: pd.DataFrame, table: pd.DataFrame, boot: dict, figures_dir: Path,
                              scores: list[str], predictions: PredictionsOf) -> Reliability:
    """``dispersion/ALL`` and, from the selected trials' seed replicates and their per-sample test predictions
    (``predictions``), ``ceiling/<dataset>``, ``retest_tau/<dataset>`` (bootstrap), ``retest_tau_seeds/<dataset>``,
    ``tau2_lo|tau2_hi/<dataset>/<score>``, the tables ``reliability``, ``tau_intervals``, ``accuracy_intervals``,
    ``replicates`` (also written to ``figures_dir``) and the ``tau_heatmap`` figure (definitions:
    :mod:`medxfer.analysis.reliability`). A dataset with a model lacking predictions (runs from before they were
    logged) is left out with a note; with none left, the tables are empty and the notes say why."""
    out = Reliability()
    spread = dispersion(table)
    if pd.notna(spread):
        out.metrics["dispersion/ALL"] = float(spread)
    replicates = replicates_of(selected)
    truths = {}
    for dataset in sorted(table["dataset"].unique()):
        models = set(table.loc[table["dataset"] == dataset, "model"])
        entries, lacking = [], []
        for _, rep in replicates[replicates["dataset"] == dataset].iterrows() if len(replicates) else []:
            if rep["model"] not in models:
                continue
            pred = predictions(rep["run_id"])
            if pred is None:
                lacking.append(f"{rep['model']} (run {rep['run_id']}, seed {rep['seed'] or '-'})")
            else:
                entries.append((rep["model"], rep["seed"], pred.ids, pred.labels, pred.probs))
        without = sorted(models - {e[0] for e in entries})
        if without:
            out.notes.append(f"dataset {dataset}: no per-sample predictions for model(s) {', '.join(without)} "
                             f"(runs: {', '.join(lacking) or 'none'}); its reliability is not computed. Fine-tune "
                             "runs log predictions/test.npz; rerun those cells (force=true) to get them")
            continue
        if lacking:
            out.notes.append(f"dataset {dataset}: seed replicates without predictions left out: {', '.join(lacking)}")
        truths[dataset] = GroundTruth.from_predictions(entries)
    if not truths:
        return out
    out.reliability, out.intervals, out.accuracy = reliability_tables(truths, table, n_boot=boot["n"], seed=boot["seed"])
    for _, row in out.reliability.iterrows():
        for name, col in (("ceiling", "ceiling"), ("retest_tau", "retest_tau_bootstrap"), ("retest_tau_seeds", "retest_tau_seeds")):
            if pd.notna(row[col]):
                out.metrics[f"{name}/{row['dataset']}"] = float(row[col])
    for _, row in out.intervals.iterrows():
        for col in ("tau2_lo", "tau2_hi"):
            if pd.notna(row[col]):
                out.metrics[f"{col}/{row['dataset']}/{row['score']}"] = float(row[col])
    out.tables = {"reliability": out.reliability, "tau_intervals": out.intervals,
                  "accuracy_intervals": out.accuracy, "replicates": replicates}
    figures_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in out.tables.items():
        frame.to_csv(figures_dir / f"{name}.csv", index=False)
    if len(out.intervals):
        present = [s for s in scores if s in set(out.intervals["score"])]
        out.figures = save_figure(tau_heatmap(out.intervals, title=f"{study}: tau against the ground truth, and its ceiling",
                                              scores=present), figures_dir / "tau_heatmap")
    return out
