"""How far the ground truth can be trusted, inside an analysis run: from the selected trials' seed replicates and
their per-sample test predictions, accuracy intervals, retest tau, the ceiling and two-level tau intervals
(definitions: :mod:`medxfer.analysis.reliability`), logged through the tracker with their tables and figure."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medxfer import tracking
from medxfer.analysis.baselines import dispersion
from medxfer.analysis.figures import save_figure, tau_heatmap
from medxfer.analysis.reliability import GroundTruth, reliability_tables
from medxfer.analysis.replicates import check_replicates
from medxfer.training.predictions import ARTIFACT_DIR, Predictions


@dataclass
class Reliability:
    """What :func:`_ground_truth_reliability` found: the tables (empty without per-sample data), the figures it
    wrote and, per dataset left out, why."""

    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    accuracy: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def n_params(selected: pd.DataFrame) -> dict[str, float]:
    """Backbone parameter counts per model from the fine-tune runs' ``n_params`` param (older runs lack it)."""
    if "params.n_params" not in selected.columns:
        return {}
    counts = pd.to_numeric(selected["params.n_params"], errors="coerce")
    return {m: float(v) for m, v in zip(selected["tags.model"], counts) if pd.notna(v)}


def replicates_of(selected: pd.DataFrame) -> pd.DataFrame:
    """The selected trials' runs (one per seed replicate, from :func:`medxfer.analysis.runs.manifest_tables`) as
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


def test_predictions(run_id: str, tmp: str) -> Predictions | None:
    """The run's ``predictions/test.npz`` (downloaded into ``tmp``), or None when the run predates per-sample
    predictions."""
    if f"{ARTIFACT_DIR}/test.npz" not in tracking.list_artifacts(run_id, ARTIFACT_DIR):
        return None
    return Predictions.load(tracking.download_artifact(run_id, f"{ARTIFACT_DIR}/test.npz", tmp))


def ground_truth_reliability(study: str, selected: pd.DataFrame, table: pd.DataFrame, boot: dict, figures_dir: Path,
                              scores: list[str]) -> Reliability:
    """Inside the analysis run: log ``dispersion/ALL`` and, from the selected trials' seed replicates and their
    per-sample test predictions, ``ceiling/<dataset>``, ``retest_tau/<dataset>`` (bootstrap),
    ``retest_tau_seeds/<dataset>``, ``tau2_lo|tau2_hi/<dataset>/<score>``, the tables ``reliability.csv``,
    ``tau_intervals.csv``, ``accuracy_intervals.csv``, ``replicates.csv`` and the ``tau_heatmap`` figure
    (definitions: :mod:`medxfer.analysis.reliability`). A dataset with a model lacking predictions (runs from
    before they were logged) is left out with a note; with none left, the run says so in the ``reliability``
    tag and ``reliability.txt``."""
    out = Reliability()
    spread = dispersion(table)
    if pd.notna(spread):
        tracking.log_metrics({"dispersion/ALL": float(spread)})
    replicates = replicates_of(selected)
    truths = {}
    downloads = tempfile.mkdtemp(prefix="medxfer-predictions-")
    for dataset in sorted(table["dataset"].unique()):
        models = set(table.loc[table["dataset"] == dataset, "model"])
        entries, lacking = [], []
        for _, rep in replicates[replicates["dataset"] == dataset].iterrows() if len(replicates) else []:
            if rep["model"] not in models:
                continue
            pred = test_predictions(rep["run_id"], downloads)
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
    shutil.rmtree(downloads, ignore_errors=True)
    for note in out.notes:
        print(f"[analyze] {note}", flush=True)
    if not truths:
        tracking.set_tags({"reliability": "no per-sample data"})
        tracking.log_text("no per-sample data: the ground truth's reliability (ceiling, retest tau, "
                          "accuracy and tau intervals) is not computed\n" + "".join(n + "\n" for n in out.notes),
                          "reliability.txt")
        return out
    out.reliability, out.intervals, out.accuracy = reliability_tables(truths, table, n_boot=boot["n"], seed=boot["seed"])
    metrics = {}
    for _, row in out.reliability.iterrows():
        for name, col in (("ceiling", "ceiling"), ("retest_tau", "retest_tau_bootstrap"), ("retest_tau_seeds", "retest_tau_seeds")):
            if pd.notna(row[col]):
                metrics[f"{name}/{row['dataset']}"] = float(row[col])
    for _, row in out.intervals.iterrows():
        for col in ("tau2_lo", "tau2_hi"):
            if pd.notna(row[col]):
                metrics[f"{col}/{row['dataset']}/{row['score']}"] = float(row[col])
    tracking.log_metrics(metrics)
    if out.notes:
        tracking.log_text("".join(n + "\n" for n in out.notes), "reliability.txt")
    figures_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in (("reliability", out.reliability), ("tau_intervals", out.intervals),
                            ("accuracy_intervals", out.accuracy), ("replicates", replicates)):
            frame.to_csv(Path(tmp) / f"{name}.csv", index=False)
            frame.to_csv(figures_dir / f"{name}.csv", index=False)
        tracking.log_artifacts(tmp, "tables")
    if len(out.intervals):
        present = [s for s in scores if s in set(out.intervals["score"])]
        out.figures = save_figure(tau_heatmap(out.intervals, title=f"{study}: tau against the ground truth, and its ceiling",
                                              scores=present), figures_dir / "tau_heatmap")
    print(f"[analyze] ground truth reliability:\n{out.reliability.round(3).to_string(index=False)}", flush=True)
    return out
