"""The analysis stage: read the study manifest's runs, correlate scores with accuracy, log tables and figures.

The stage receives the manifest (:func:`medxfer.workflows.grid.study_manifest`, or ``None`` with ``legacy=true``);
reading runs and artifacts back goes through :mod:`medxfer.results`."""

from __future__ import annotations

import dataclasses
import functools
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medxfer import tracking
from medxfer.analysis.baselines import BASELINES, add_baselines
from medxfer.analysis.correlation import correlate
from medxfer.analysis.ensembles import EnsembleWarning, add_ensembles, parse_ensembles
from medxfer.analysis.figures import correlation_figures, save_figures
from medxfer.analysis.ground_truth import Reliability, ground_truth_reliability, n_params, replicates_of
from medxfer.analysis.leak_effect import LeakEffect, leak_effect
from medxfer.analysis.report import describe_study
from medxfer.cells import analysis_cell_id
from medxfer.errors import MedxferError
from medxfer.manifest import Manifest
from medxfer.results import has_finished_runs, predictions_of, read_analysis, study_tables
from medxfer.tracking import cell_run, ensure_experiment, setup_tracking
from medxfer.tracking.secrets import redact_text


class IncompleteStudy(MedxferError, RuntimeError):
    """The study lacks runs the analysis needs; the message lists them."""


@dataclass
class AnalysisResult:
    run_id: str
    iid: pd.DataFrame
    ood: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)  # linear ensembles' weights per held-out dataset


def _log_correlations(corr: pd.DataFrame, prefix: str) -> None:
    metrics = {}
    for _, row in corr.iterrows():
        for stat in ("tau", "wtau"):
            value = row[stat]
            if pd.notna(value):
                metrics[f"{prefix}{stat}/{row['dataset']}/{row['score']}"] = float(value)
    tracking.log_metrics(metrics)


def _score_order(table: pd.DataFrame, ensembles: list[str]) -> list[str]:
    """The table's scores sorted, then its ensembles in config order (figure columns, printed tables)."""
    present = set(table["score"])
    return sorted(present - set(ensembles)) + [e for e in ensembles if e in present]


def _present(value: object) -> bool:
    return isinstance(value, str) and value != ""


def registered_name(study: str, model: str, dataset: str) -> str:
    """The Model Registry name of a (model, dataset) of a study: ``<study>.<model>.<dataset>``, characters other
    than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{study}.{model}.{dataset}")


def _log_selected_models(selected: pd.DataFrame, study: str, options: dict) -> None:
    """``mlflow_models.log``: each selected fine-tune run's kept checkpoint as an MLflow LoggedModel (once per run);
    ``mlflow_models.register``: also registered. Runs without a checkpoint on disk (``finetune.keep=none``, or removed
    by hand) are named, not logged."""
    if not options.get("log") or len(selected) == 0:
        return
    logged = registered = 0
    absent = []
    for _, run in selected.iterrows():
        name = str(run.get("tags.mlflow.runName") or f"{run['tags.model']}@{run['tags.dataset']}")
        model_id = run.get("tags.logged_model_id")
        if not _present(model_id):
            path = run.get("tags.checkpoint_path")
            if not _present(path) or not Path(path).is_file():
                absent.append(name)
                continue
            model_id = tracking.log_checkpoint_model(
                run["run_id"], str(run["experiment_id"]), name,
                params={k: run.get(f"params.{k}") for k in ("lr", "wd", "trial", "n_classes") if pd.notna(run.get(f"params.{k}"))},
                tags={k: str(run.get(f"tags.{k}")) for k in ("checkpoint_path", "checkpoint_digest", "model", "dataset",
                                                             "cell", "seed", "study") if _present(run.get(f"tags.{k}"))})
            logged += 1
        if options.get("register") and not _present(run.get("tags.registered_model")):
            tracking.register_logged_model(run["run_id"], model_id,
                                           registered_name(study, run["tags.model"], run["tags.dataset"]))
            registered += 1
    if logged or registered:
        print(f"[analyze] selected trials: {logged} checkpoint(s) logged as MLflow models"
              + (f", {registered} registered" if options.get("register") else ""), flush=True)
    if absent:
        print(f"[analyze] {len(absent)} selected trial(s) have no checkpoint on disk (finetune.keep=none, or "
              f"deleted), not logged as models: {', '.join(absent)}", flush=True)


#: The analysis settings that change its numbers: with the manifest and the runs read, its identity.
ANALYSIS_SETTINGS = ("select", "bootstrap", "ensembles", "allow_incomplete")


def _report(study: str, iid: pd.DataFrame, tables: Any, ensembles: list[str]) -> None:
    """The closing lines of an analysis, new or reused: its tau table and a caution per leaking cell."""
    print(f"[analyze] study {study}: {tables.iid['model'].nunique()} models x {tables.iid['dataset'].nunique()} datasets; "
          f"tau table (in distribution):\n" + iid.pivot(index="dataset", columns="score", values="tau")
          [_score_order(iid, ensembles + list(BASELINES))].round(2).to_string(), flush=True)
    for m, d in tables.leaks:
        print(f"[analyze] caution: {m} was trained on data that overlaps {d} (model.leaks_into); its {d} row is "
              "not a transfer result", flush=True)


def _earlier_analysis(experiment_id: str, cell: str, figures_dir: Path) -> AnalysisResult | None:
    """The FINISHED analysis run of this very analysis (``cell``), with its figures and tables copied back into
    ``figures_dir`` (another analysis may have drawn there since); None when there is none."""
    run = tracking.finished_runs_of(experiment_id, [cell]).get(cell)
    read = None if run is None else read_analysis(run.info.run_id, figures_dir)
    if read is None:
        return None
    return AnalysisResult(read.run_id, read.iid, read.ood, read.figures, weights=read.weights)


def _log_reliability(out: Reliability) -> None:
    """Log what :func:`ground_truth_reliability` found into the active analysis run, and print it."""
    tracking.log_metrics(out.metrics)
    for note in out.notes:
        print(f"[analyze] {note}", flush=True)
    if not out.tables:
        tracking.set_tags({"reliability": "no per-sample data"})
        tracking.log_text("no per-sample data: the ground truth's reliability (ceiling, retest tau, "
                          "accuracy and tau intervals) is not computed\n" + "".join(n + "\n" for n in out.notes),
                          "reliability.txt")
        return
    if out.notes:
        tracking.log_text("".join(n + "\n" for n in out.notes), "reliability.txt")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in out.tables.items():
            frame.to_csv(Path(tmp) / f"{name}.csv", index=False)
        tracking.log_artifacts(tmp, "tables")
    print(f"[analyze] ground truth reliability:\n{out.reliability.round(3).to_string(index=False)}", flush=True)


def _log_leak_effect(effect: LeakEffect, figures_dir: Path) -> None:
    """The accuracies and taus on the whole published test set beside those on its clean samples, where a
    dataset's test set leaks from training: printed, logged as tables and written beside the figures."""
    for note in effect.notes:
        print(f"[analyze] {note}", flush=True)
    if len(effect.accuracy) == 0:
        return
    datasets = sorted(set(effect.accuracy["dataset"]))
    print(f"[analyze] leaked test samples ({', '.join(datasets)}): test balanced accuracy on every test sample "
          f"and on the clean ones only (95 % intervals)\n{effect.accuracy.round(3).to_string(index=False)}", flush=True)
    print(f"[analyze] Kendall tau with and without the leaked test samples\n"
          f"{effect.tau.round(3).to_string(index=False)}", flush=True)
    tracking.set_tags({"leak_effect": ", ".join(datasets)})
    figures_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in (("leak_effect_accuracy", effect.accuracy), ("leak_effect_tau", effect.tau)):
            frame.to_csv(Path(tmp) / f"{name}.csv", index=False)
            frame.to_csv(figures_dir / f"{name}.csv", index=False)
        tracking.log_artifacts(tmp, "tables")


def ground_truth_protocol(selected: pd.DataFrame) -> str:
    """The fine-tune protocol behind the ground truth, as its runs record it (``search_protocol``; runs that
    predate the tag, or were fine-tuned alone, say so)."""
    col = "tags.search_protocol"
    found = sorted(set(selected[col].dropna())) if col in selected.columns else []
    unstated = len(selected) - (int(selected[col].notna().sum()) if col in selected.columns else 0)
    parts = found + ([f"{unstated} run(s) without a recorded search protocol"] if unstated else [])
    return "; ".join(parts) or "no fine-tune runs"


def run_analyze(cfg: DictConfig, manifest: Manifest | Callable[[], Manifest] | None,
                overrides: list[str] | None = None) -> AnalysisResult:
    """Correlate the scores of the study's ``manifest`` with fine-tuned balanced accuracy, in distribution and out
    of it. ``manifest`` may be a function that builds it (called only once the study has runs: building one reads
    every dataset); with ``legacy=true`` it is not used."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    setup_tracking(c["tracking"]["uri"])
    study = c["study"]
    if not has_finished_runs(study):
        raise IncompleteStudy(
            f"study {study!r} has no FINISHED score or fine-tune run in the tracking store "
            f"{redact_text(c['tracking']['uri'])} (experiments {study}/score, {study}/finetune)",
            hint=f"run it first (medxfer-study study={study} ...), or check study= and tracking.uri for a typo")
    if c.get("legacy"):
        manifest = None
    elif manifest is None:
        raise ValueError("run_analyze needs the study's manifest (medxfer.workflows.grid.study_manifest) unless "
                         "legacy=true")
    elif callable(manifest):
        manifest = manifest()
    tables = study_tables(study, manifest, select_metric=c["select"]["metric"], select_mode=c["select"]["mode"],
                          models=c["models"], datasets=c["datasets"])
    if tables.missing and not c["allow_incomplete"]:
        raise IncompleteStudy(
            f"study {study!r} is incomplete; missing {len(tables.missing)} run(s):\n  " + "\n  ".join(tables.missing)
            + "\nRun the missing cells (medxfer-score / medxfer-finetune, or medxfer-study), or pass allow_incomplete=true."
        )
    if len(tables.iid) == 0:
        raise IncompleteStudy(f"study {study!r} has no (score run, fine-tune run) pair to correlate")
    cell = analysis_cell_id(tables.manifest_id, tables.run_ids, {k: c.get(k) for k in ANALYSIS_SETTINGS}) \
        if tables.manifest_id and tables.run_ids else "analysis"
    existing = tracking.experiment_id_of(c["tracking"]["experiment"])
    earlier = None if c["force"] or cell == "analysis" or existing is None \
        else _earlier_analysis(existing, cell, Path(c["figures_dir"]))
    if earlier is not None:
        print(f"[analyze] up to date: analysis run {earlier.run_id} read these {len(tables.run_ids)} runs with these "
              f"settings; its figures and tables are back in {c['figures_dir']} (force=true analyses again)", flush=True)
        _log_selected_models(tables.selected, study, c.get("mlflow_models") or {})
        _report(study, earlier.iid, tables, [e.name for e in parse_ensembles(c.get("ensembles"))])
        return dataclasses.replace(earlier, missing=tables.missing)
    # ensembles become scores of the tables, so everything below (correlations, metrics, figures, CSV) has them
    ensembles = ood_ensembles = parse_ensembles(c.get("ensembles"))
    if tables.not_applicable:
        # "every score" means every score that applies to every model (LEEP and NCE need a source head,
        # imagenet_top1 a published top-1): a model lacking one would otherwise be dropped from the ensembles
        usable = tuple(sorted(set(tables.iid["score"]) - set(tables.not_applicable)))
        ensembles = [dataclasses.replace(e, scores=usable) if e.scores is None else e for e in ensembles]
        for name, models in tables.not_applicable.items():
            print(f"[analyze] {name} does not apply to {len(models)} model(s) "
                  f"({', '.join(models)}): correlated over the others, left out of the ensembles", flush=True)
    names = [e.name for e in ensembles]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EnsembleWarning)
        iid_ens = add_ensembles(tables.iid, ensembles, allow_incomplete=c["allow_incomplete"],
                                where="the in-distribution table")
        # OOD scores of single models may fail (the ood_score_errors tag) without failing the trial: such a
        # model is left out of the OOD ensembles, with a warning, as correlate() leaves it out of that score
        ood_ens = add_ensembles(tables.ood, ood_ensembles, allow_incomplete=True,
                                where="the out-of-distribution table") if len(tables.ood) else None
    for w in caught:  # shown as usual, and kept for the run's warnings.txt
        warnings.warn(w.message, w.category, stacklevel=2)
    ensemble_warnings = [str(w.message) for w in caught if issubclass(w.category, EnsembleWarning)]
    iid_table, baseline_notes = add_baselines(iid_ens.table, n_params(tables.selected))  # after the ensembles: not in them
    ood_table = ood_ens.table if ood_ens is not None else tables.ood
    fitted = [w.weights.assign(split=split) for split, w in (("iid", iid_ens), ("ood", ood_ens)) if w is not None and len(w.weights)]
    weights = pd.concat(fitted, ignore_index=True) if fitted else pd.DataFrame()
    if len(weights):
        weights = weights[["split", *[col for col in weights.columns if col != "split"]]]
    boot = c["bootstrap"]
    iid = correlate(iid_table, n_boot=boot["n"], seed=boot["seed"])
    ood = correlate(ood_table, n_boot=boot["n"], seed=boot["seed"]) if len(ood_table) else pd.DataFrame()
    figures_dir = Path(c["figures_dir"])
    experiment_id = ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    protocol = ground_truth_protocol(tables.selected)
    print(f"[analyze] ground truth: {protocol}", flush=True)
    tags = {"stage": "analysis", "study": study, "model": "all", "dataset": "all", "split": "iid+ood", "cell": cell,
            "ground_truth": protocol,
            **({"manifest": tables.manifest_id} if tables.manifest_id else {"manifest": "legacy"})}
    with cell_run(experiment_id, run_name=f"{study}-analysis", tags=tags, config=c, overrides=overrides) as run:
        figures = []
        _log_correlations(iid, "")
        with tempfile.TemporaryDirectory(prefix="medxfer-predictions-") as downloads:
            read = functools.lru_cache(maxsize=None)(lambda run_id: predictions_of(run_id, downloads))
            reliability = ground_truth_reliability(study, tables.selected, iid_table, boot, figures_dir,
                                                    _score_order(iid_table, names + list(BASELINES)), read)
            leaked = leak_effect(replicates_of(tables.selected), iid_table, read, n_boot=boot["n"], seed=boot["seed"])
        _log_reliability(reliability)
        _log_leak_effect(leaked, figures_dir)
        figures += reliability.figures
        figs = correlation_figures(iid_table, iid, title=f"{study}: ImageNet-feature scores vs test balanced accuracy\n{protocol}",
                                   target_label="test bal. acc.", scores=_score_order(iid_table, names + list(BASELINES)),
                                   errors=reliability.accuracy)
        figures += save_figures(figs, figures_dir / "correlation_iid")
        if len(ood):
            _log_correlations(ood, "ood_")
            figs = correlation_figures(ood_table, ood, title=f"{study}: fine-tuned-model scores on the OOD set vs OOD balanced accuracy\n{protocol}",
                                       target_label="OOD bal. acc.", scores=_score_order(ood_table, names))
            figures += save_figures(figs, figures_dir / "correlation_ood")  # at most 8 score columns per figure
        with tempfile.TemporaryDirectory() as tmp:
            iid.to_csv(Path(tmp) / "correlations_iid.csv", index=False)
            iid_table.to_csv(Path(tmp) / "table_iid.csv", index=False)
            if len(ood):
                ood.to_csv(Path(tmp) / "correlations_ood.csv", index=False)
                ood_table.to_csv(Path(tmp) / "table_ood.csv", index=False)
            if len(weights):
                weights.to_csv(Path(tmp) / "ensemble_weights.csv", index=False)
            tracking.log_artifacts(tmp, "tables")
        iid.to_csv(figures_dir / "correlations_iid.csv", index=False)
        if len(ood):
            ood.to_csv(figures_dir / "correlations_ood.csv", index=False)
        if len(weights):
            weights.to_csv(figures_dir / "ensemble_weights.csv", index=False)
        for path in figures:
            tracking.log_artifact(path, "figures")
        tracking.log_params({"n_models": tables.iid["model"].nunique(), "n_datasets": tables.iid["dataset"].nunique(),
                           "missing_cells": len(tables.missing)})
        if tables.missing:
            tracking.log_text("\n".join(tables.missing) + "\n", "missing.txt")
        if tables.leaks:
            tracking.log_text("".join(f"model={m} dataset={d}: the weights were trained on data that overlaps "
                                                  "the dataset\n" for m, d in tables.leaks), "leaks.txt")
            tracking.set_tags({"leaking_cells": ", ".join(f"{m}@{d}" for m, d in tables.leaks)})
        if ensemble_warnings or baseline_notes:
            tracking.log_text("\n".join(ensemble_warnings + baseline_notes) + "\n", "warnings.txt")
        datasets = sorted(set(tables.iid["dataset"]))
        tracking.set_tags({"mlflow.note.content": describe_study(
            study, sorted(set(tables.iid["model"])), datasets, iid, reliability.reliability,
            [p for p in figures if str(p).endswith(".png")], synthetic=all(d.startswith("synthetic") for d in datasets))})
    _log_selected_models(tables.selected, study, c.get("mlflow_models") or {})
    _report(study, iid, tables, names)
    return AnalysisResult(run.info.run_id, iid, ood, figures, tables.missing, weights)
