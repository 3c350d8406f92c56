"""The analysis stage: query the study's runs, correlate scores with accuracy, log tables and figures."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medxfer.analysis.correlation import correlate
from medxfer.analysis.figures import correlation_figure, save_figure
from medxfer.analysis.runs import load_study
from medxfer.tracking import cell_run, ensure_experiment, setup_tracking


class IncompleteStudy(RuntimeError):
    """The study lacks runs the analysis needs; the message lists them."""


@dataclass
class AnalysisResult:
    run_id: str
    iid: pd.DataFrame
    ood: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _log_correlations(corr: pd.DataFrame, prefix: str) -> None:
    metrics = {}
    for _, row in corr.iterrows():
        for stat in ("tau", "wtau"):
            value = row[stat]
            if pd.notna(value):
                metrics[f"{prefix}{stat}/{row['dataset']}/{row['score']}"] = float(value)
    mlflow.log_metrics(metrics)


def run_analyze(cfg: DictConfig, overrides: list[str] | None = None) -> AnalysisResult:
    """Correlate the study's scores with fine-tuned balanced accuracy, in distribution and out of it."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    setup_tracking(c["tracking"]["uri"])
    study = c["study"]
    tables = load_study(study, models=c["models"], datasets=c["datasets"],
                        select_metric=c["select"]["metric"], select_mode=c["select"]["mode"])
    if tables.missing and not c["allow_incomplete"]:
        raise IncompleteStudy(
            f"study {study!r} is incomplete; missing {len(tables.missing)} run(s):\n  " + "\n  ".join(tables.missing)
            + "\nRun the missing cells (medxfer-score / medxfer-finetune, or medxfer-study), or pass allow_incomplete=true."
        )
    if len(tables.iid) == 0:
        raise IncompleteStudy(f"study {study!r} has no (score run, fine-tune run) pair to correlate")
    boot = c["bootstrap"]
    iid = correlate(tables.iid, n_boot=boot["n"], seed=boot["seed"])
    ood = correlate(tables.ood, n_boot=boot["n"], seed=boot["seed"]) if len(tables.ood) else pd.DataFrame()
    figures_dir = Path(c["figures_dir"])
    experiment_id = ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    tags = {"stage": "analysis", "study": study, "model": "all", "dataset": "all", "split": "iid+ood", "cell": "analysis"}
    with cell_run(experiment_id, run_name=f"{study}-analysis", tags=tags, config=c, overrides=overrides) as run:
        figures = []
        _log_correlations(iid, "")
        fig = correlation_figure(tables.iid, iid, title=f"{study}: ImageNet-feature scores vs test balanced accuracy",
                                 target_label="test bal. acc.")
        figures += save_figure(fig, figures_dir / "correlation_iid")
        if len(ood):
            _log_correlations(ood, "ood_")
            fig = correlation_figure(tables.ood, ood, title=f"{study}: fine-tuned-model scores on the OOD set vs OOD balanced accuracy",
                                     target_label="OOD bal. acc.")
            figures += save_figure(fig, figures_dir / "correlation_ood")
        with tempfile.TemporaryDirectory() as tmp:
            iid.to_csv(Path(tmp) / "correlations_iid.csv", index=False)
            tables.iid.to_csv(Path(tmp) / "table_iid.csv", index=False)
            if len(ood):
                ood.to_csv(Path(tmp) / "correlations_ood.csv", index=False)
                tables.ood.to_csv(Path(tmp) / "table_ood.csv", index=False)
            mlflow.log_artifacts(tmp, "tables")
        iid.to_csv(figures_dir / "correlations_iid.csv", index=False)
        if len(ood):
            ood.to_csv(figures_dir / "correlations_ood.csv", index=False)
        for path in figures:
            mlflow.log_artifact(str(path), "figures")
        mlflow.log_params({"n_models": tables.iid["model"].nunique(), "n_datasets": tables.iid["dataset"].nunique(),
                           "missing_cells": len(tables.missing)})
        if tables.missing:
            mlflow.log_text("\n".join(tables.missing) + "\n", "missing.txt")
    print(f"[analyze] study {study}: {tables.iid['model'].nunique()} models x {tables.iid['dataset'].nunique()} datasets; "
          f"tau table (in distribution):\n" + iid.pivot(index="dataset", columns="score", values="tau").round(2).to_string())
    return AnalysisResult(run.info.run_id, iid, ood, figures, tables.missing)
