"""The results of a study as its analysis run logged them: one source for the notebook, the UI and the log.

The analysis run (``<study>/analysis``) holds the tables every reader should show: the long tables with the
ensembles and baselines added (``tables/table_iid.csv``, ``tables/table_ood.csv``) and the correlations computed
from them (``tables/correlations_iid.csv``, ``tables/correlations_ood.csv``). Recomputing them elsewhere gives a
different table as soon as the analysis options (ensembles, selection metric, bootstrap) differ.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from typing import TYPE_CHECKING

from medxfer.errors import MedxferError
from medxfer import tracking

if TYPE_CHECKING:
    from medxfer.analysis.evidence import Evidence


class NoAnalysisRun(MedxferError, LookupError):
    """The study has no FINISHED analysis run to read."""


@dataclass
class AnalysisTables:
    """The tables of one analysis run; ``ood`` and ``ood_table`` are empty when the study has no OOD sets,
    ``reliability`` when the fine-tune runs had no per-sample predictions. ``config``: the run's resolved analyze
    config (its grid and ensembles)."""

    run_id: str
    iid: pd.DataFrame
    iid_table: pd.DataFrame
    ood: pd.DataFrame
    ood_table: pd.DataFrame
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict[str, Any] = field(default_factory=dict)


def analysis_runs(study: str, manifest_id: str | None) -> pd.DataFrame:
    """The FINISHED runs of ``<study>/analysis`` made from exactly the manifest ``manifest_id`` (tag
    ``manifest``), newest first; every analysis run of the study when ``manifest_id`` is None."""
    return _of_manifest(tracking.finished_frame(f"{study}/analysis"), manifest_id)  # newest first


def _of_manifest(runs: pd.DataFrame, manifest_id: str | None) -> pd.DataFrame:
    if manifest_id is None or not len(runs):
        return runs
    if "tags.manifest" not in runs.columns:
        return runs.iloc[0:0]
    return runs[runs["tags.manifest"] == manifest_id]


def study_analysis(c: dict) -> AnalysisTables:
    """The tables of the newest analysis run of the study config ``c`` (a resolved ``analyze.yaml``: study, grid,
    paths): the run whose manifest is ``c``'s, so a run made from another grid (models, datasets, presets) is
    never read in its place."""
    from medxfer.manifest import study_manifest

    return latest_analysis(c["study"], manifest_id=study_manifest(c).id)


def latest_analysis(study: str, manifest_id: str | None = None) -> AnalysisTables:
    """The tables of the newest FINISHED run of ``<study>/analysis`` (on the current tracking URI); with
    ``manifest_id``, the newest made from that manifest."""
    experiment = f"{study}/analysis"
    others = tracking.finished_frame(experiment)  # newest first; one query, filtered here
    runs = _of_manifest(others, manifest_id)
    if not len(runs):
        if len(others):
            tags = sorted(set(others.get("tags.manifest", pd.Series(dtype=str)).dropna()))
            raise NoAnalysisRun(
                f"study {study!r} has {len(others)} FINISHED analysis run(s) in experiment {experiment!r}, none "
                f"made from this study config's manifest {manifest_id} (theirs: {', '.join(tags) or 'untagged'}); "
                f"run medxfer-analyze with the same study, grid and experiment options first")
        raise NoAnalysisRun(f"study {study!r} has no FINISHED analysis run in experiment {experiment!r} "
                            f"(tracking URI {tracking.current_uri()}); run medxfer-analyze study={study} "
                            "(or make study) first")
    run_id = str(runs.iloc[0]["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tracking.download_artifact(run_id, "tables", tmp))
        read = {name: pd.read_csv(folder / f"{name}.csv") if (folder / f"{name}.csv").is_file() else pd.DataFrame()
                for name in ("correlations_iid", "table_iid", "correlations_ood", "table_ood", "reliability")}
        try:
            config = yaml.safe_load(Path(tracking.download_artifact(run_id, "config.yaml", tmp)).read_text()) or {}
        except Exception:  # noqa: BLE001 - a run without its config: the tables are still its results
            config = {}
    if read["correlations_iid"].empty:
        raise NoAnalysisRun(f"analysis run {run_id} of study {study!r} has no tables/correlations_iid.csv; "
                            f"run medxfer-analyze study={study} again")
    return AnalysisTables(run_id, read["correlations_iid"], read["table_iid"], read["correlations_ood"],
                          read["table_ood"], read["reliability"], config)


def medxfer_version() -> str:
    """The installed medxfer's version (``unknown`` in a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medxfer")
    except PackageNotFoundError:
        return "unknown"


def analysis_evidence(study: str, manifest_id: str | None, protocol: dict[str, Any]) -> "Evidence":
    """The evidence of every ranker of the newest analysis run of ``study`` made from ``manifest_id``
    (:func:`latest_analysis`; raises :class:`NoAnalysisRun`): its pooled taus, intervals, regrets and ceiling, the
    baselines' values per model, and ens_linear's weights refitted on every dataset of its table."""
    from medxfer.analysis.ensembles import fit_linear_pooling
    from medxfer.analysis.evidence import ENSEMBLE_KINDS, evidence_from_tables, usable_scores

    run = latest_analysis(study, manifest_id)
    table = run.iid_table
    ensembles = {}
    for name, spec in (run.config.get("ensembles") or {}).items():
        kind = (spec or {}).get("kind")
        if kind is not None:
            ensembles[name] = (kind, (spec or {}).get("scores"), float((spec or {}).get("alpha", 1e-3)))
    usable = usable_scores(table, {n: (k, s) for n, (k, s, _) in ensembles.items()})
    combined = {n: (k, list(s) if s else usable) for n, (k, s, _) in ensembles.items()}
    weights = None
    linear = next(((n, a) for n, (k, _, a) in ensembles.items() if k == "linear" and n == "ens_linear"), None)
    if linear is not None and table["dataset"].nunique() >= 2:
        raw = table[table["score"].isin(combined[linear[0]][1])]
        weights = {str(k): float(v) for k, v in fit_linear_pooling(raw, combined[linear[0]][1], alpha=linear[1],
                                                                   allow_incomplete=True).items()}
    return evidence_from_tables(table, run.iid, study=study, source=f"tracked study {study!r} (analysis run "
                                f"{run.run_id[:8]})", ensembles=combined, reliability=run.reliability,
                                protocol=protocol, linear_weights=weights, medxfer_version=medxfer_version())


def runs_evidence(iid: pd.DataFrame, selected: pd.DataFrame, *, study: str, ensembles: dict[str, tuple[str, list[str]]],
                  protocol: dict[str, Any], alpha: float = 1e-3, n_boot: int = 1000, seed: int = 0) -> "Evidence":
    """The evidence computed from a study's long table ``iid`` (:func:`medxfer.analysis.runs.study_tables`, without
    an analysis run): the ``ensembles`` (name -> (kind, scores)) and the baselines added, then correlated as the
    analysis does."""
    import warnings

    from medxfer.analysis.baselines import add_baselines
    from medxfer.analysis.correlation import UndefinedCorrelation, correlate
    from medxfer.analysis.ensembles import Ensemble, EnsembleWarning, add_ensembles, fit_linear_pooling
    from medxfer.analysis.evidence import evidence_from_tables
    from medxfer.analysis.ground_truth import n_params

    present = set(iid["score"])
    wanted = {n: (k, s) for n, (k, s) in ensembles.items() if s and set(s) <= present}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnsembleWarning)
        warnings.simplefilter("ignore", UndefinedCorrelation)
        table = iid
        if wanted and iid["dataset"].nunique() >= 1:
            table = add_ensembles(iid, [Ensemble(n, k, tuple(s), alpha) for n, (k, s) in wanted.items()
                                        if k != "linear" or iid["dataset"].nunique() >= 2],
                                  allow_incomplete=True).table
        table, _ = add_baselines(table, n_params(selected) if len(selected) else None)
        table = table[table.groupby(["dataset", "score"])["model"].transform("nunique") >= 2]
        corr = correlate(table, n_boot=n_boot, seed=seed)
    weights = None
    linear = next((s for n, (k, s) in wanted.items() if k == "linear"), None)
    if linear and iid["dataset"].nunique() >= 2:
        weights = {str(k): float(v) for k, v in fit_linear_pooling(iid, linear, alpha=alpha,
                                                                   allow_incomplete=True).items()}
    return evidence_from_tables(table, corr, study=study, source=f"tracked study {study!r} (computed from its score "
                                "and fine-tune runs)", ensembles=wanted, protocol=protocol, linear_weights=weights,
                                medxfer_version=medxfer_version())
