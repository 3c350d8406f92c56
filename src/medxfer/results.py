"""A study's results as the tracker holds them: its runs read for a manifest, and its analysis run's artifacts.

The one place that reads runs and artifacts back for a study (the analysis stage, ``medxfer-rank``'s tau and the
notebook go through it):

- :func:`study_tables` reads exactly the cells of a study manifest (:mod:`medxfer.manifest`) from the FINISHED
  runs of ``<study>/score`` and ``<study>/finetune``, as the long tables :func:`medxfer.analysis.correlate` takes:
  runs of other settings are counted, never read. Without a manifest (``legacy=true``) it reads runs tracked
  before cell schema 2 the old way: the newest run per model and dataset, whatever its settings.
- :func:`read_analysis` reads one analysis run's tables and figures, :func:`latest_analysis` the newest analysis
  of a manifest. The analysis run (``<study>/analysis``) holds the tables every reader should show: the long
  tables with the ensembles and baselines added (``tables/table_iid.csv``, ``tables/table_ood.csv``) and the
  correlations computed from them (``tables/correlations_iid.csv``, ``tables/correlations_ood.csv``).
  Recomputing them elsewhere gives a different table as soon as the analysis options differ.
- :func:`predictions_of` reads a fine-tune run's per-sample test predictions (the ground truth's reliability).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from medxfer import tracking
from medxfer.analysis.selection import select_trials
from medxfer.errors import MedxferError
from medxfer.manifest import Manifest
from medxfer.training.predictions import ARTIFACT_DIR, Predictions

if TYPE_CHECKING:
    from medxfer.analysis.evidence import Evidence

SCORE_PREFIX = "metrics.score/"
OOD_SCORE_PREFIX = "metrics.ood_score/"


@dataclass
class StudyTables:
    """Long tables (``dataset, model, score, value, target``) for the in-distribution and OOD analyses.

    ``selected`` has one row per (model, dataset): the fine-tuning run chosen by the selection metric.
    ``missing`` lists what the study lacks, as human-readable lines (empty when complete).
    """

    iid: pd.DataFrame
    ood: pd.DataFrame
    selected: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # dataset -> content digest of its training split
    manifest_id: str | None = None  # hash of the manifest's cell ids: tags the analysis run made from these tables
    extra: int = 0  # FINISHED runs in the study's experiments that are not cells of its manifest (not read)
    leaks: list[tuple[str, str]] = field(default_factory=list)  # (model, dataset): weights trained on overlapping data
    not_applicable: dict[str, list[str]] = field(default_factory=dict)  # score -> models it does not apply to
    run_ids: list[str] = field(default_factory=list)  # every run read (manifest reading only): the analysis' identity


def _latest(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The newest run per key (runs are sorted newest first); forced reruns replace older values."""
    return runs.drop_duplicates(keys, keep="first") if len(runs) else runs


def _long(frame: pd.DataFrame, prefix: str, target_col: str) -> pd.DataFrame:
    cols = [c for c in frame.columns if c.startswith(prefix)]
    if not cols or target_col not in frame.columns:
        return pd.DataFrame(columns=["dataset", "model", "score", "value", "target"])
    long = frame.melt(id_vars=["tags.dataset", "tags.model", target_col], value_vars=cols, var_name="score", value_name="value")
    long = long.dropna(subset=["value", target_col])
    return pd.DataFrame({
        "dataset": long["tags.dataset"].to_numpy(), "model": long["tags.model"].to_numpy(),
        "score": long["score"].str.slice(len(prefix)).to_numpy(), "value": long["value"].to_numpy(float),
        "target": long[target_col].to_numpy(float),
    })


def load_study(
    score_runs: pd.DataFrame, finetune_runs: pd.DataFrame, *, models: list[str] | None = None,
    datasets: list[str] | None = None, select_metric: str = "best/val_bal_acc", select_mode: str = "max",
) -> StudyTables:
    """Query the study's score and fine-tune runs and join them per (model, dataset).

    In distribution: ``score/<name>`` of the ImageNet features on the training split vs the selected trial's
    ``test/bal_acc``. Out of distribution: the selected trial's ``ood_score/<name>`` vs its ``ood/bal_acc``.
    ``models``/``datasets`` restrict the study (None: whatever was tracked); cells without a FINISHED score
    run or fine-tune run are listed in ``missing``.
    """
    if len(score_runs):
        score_runs = score_runs[score_runs["tags.split"].isin(["iid", "train"])]
    scores = _latest(score_runs, ["tags.model", "tags.dataset"])
    finetune = finetune_runs
    if len(finetune) and "tags.stop_epoch" in finetune.columns:  # a halving search's rungs are not results
        finetune = finetune[finetune["tags.stop_epoch"].isna()]
    def restrict(frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) == 0:
            return frame
        keep = pd.Series(True, index=frame.index)
        if models:
            keep &= frame["tags.model"].isin(models)
        if datasets:
            keep &= frame["tags.dataset"].isin(datasets)
        return frame[keep]

    scores, finetune = restrict(scores), restrict(finetune)
    selected = select_trials(finetune, select_metric, select_mode).drop_duplicates(["tags.model", "tags.dataset"])
    seen_m = set(models or []) | set(scores.get("tags.model", [])) | set(finetune.get("tags.model", []))
    seen_d = set(datasets or []) | set(scores.get("tags.dataset", [])) | set(finetune.get("tags.dataset", []))
    expected = {(m, d) for m in seen_m for d in seen_d}
    have_scores = set(zip(scores.get("tags.model", []), scores.get("tags.dataset", [])))
    have_ft = set(zip(selected.get("tags.model", []), selected.get("tags.dataset", [])))
    missing = [f"score run (iid) for model={m} dataset={d}" for m, d in sorted(expected - have_scores)]
    missing += [f"fine-tune run for model={m} dataset={d}" for m, d in sorted(expected - have_ft)]
    return _joined(scores, selected, missing)


def manifest_tables(manifest: Manifest, score_runs: pd.DataFrame, finetune_runs: pd.DataFrame, *,
                    select_metric: str = "best/val_bal_acc", select_mode: str = "max") -> StudyTables:
    """The tables of exactly the manifest's cells: each cell's newest FINISHED run (frames of FINISHED runs,
    newest first). Per (model, dataset) the selected trial's seed replicates are averaged (``selected`` keeps
    one row per replicate). Cells without a run are listed in ``missing`` by run name."""
    def of(frame: pd.DataFrame, cells: list) -> tuple[pd.DataFrame, list[str]]:
        ids = {cell.id for cell in cells}
        if len(frame) == 0 or "tags.cell" not in frame.columns:
            return pd.DataFrame(), [c.run_name for c in cells]
        found = frame[frame["tags.cell"].isin(ids)].drop_duplicates("tags.cell", keep="first")
        have = set(found["tags.cell"])
        return found, [c.run_name for c in cells if c.id not in have]

    scores, missing_s = of(score_runs, [c for c in manifest.score if c.split == "train"])
    ood_scores, missing_o = of(score_runs, [c for c in manifest.score if c.split != "train"])
    finetune, missing_f = of(finetune_runs, manifest.finetune)
    selected = select_trials(finetune, select_metric, select_mode)
    missing = [f"score run {n}" for n in missing_s + missing_o] + [f"fine-tune run {n}" for n in missing_f]
    tables = _joined(scores, _seed_means(selected), missing)
    tables.selected = selected
    tables.extra = _extra(score_runs, manifest.ids("score")) + _extra(finetune_runs, manifest.ids("finetune"))
    tables.run_ids = sorted(str(r) for f in (scores, ood_scores, finetune) if len(f) for r in f["run_id"])
    return tables


def _extra(frame: pd.DataFrame, ids: list[str]) -> int:
    if len(frame) == 0 or "tags.cell" not in frame.columns:
        return len(frame)
    extra = ~frame["tags.cell"].isin(set(ids))
    # a halving search's rungs, and the points of its last rung it did not select: how the study found its cells
    if "tags.stop_epoch" in frame.columns:
        extra &= frame["tags.stop_epoch"].isna()
    if "tags.search" in frame.columns:
        extra &= frame["tags.search"] != "halving"
    return int(extra.sum())


def _seed_means(selected: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset): the mean of every metric over the selected trial's seed replicates."""
    if len(selected) == 0:
        return selected
    metrics = [c for c in selected.columns if c.startswith("metrics.")]
    means = selected.groupby(["tags.model", "tags.dataset"], as_index=False)[metrics].mean()
    return means.assign(n_seeds=selected.groupby(["tags.model", "tags.dataset"]).size().to_numpy())


def _joined(scores: pd.DataFrame, selected: pd.DataFrame, missing: list[str]) -> StudyTables:
    """Score runs joined with the selected fine-tuning results per (model, dataset)."""
    target = "metrics.test/bal_acc"
    if len(scores) and len(selected):
        joined = scores.merge(selected[["tags.model", "tags.dataset", target]], on=["tags.model", "tags.dataset"], how="inner")
    else:
        joined = pd.DataFrame()
    iid = _long(joined, SCORE_PREFIX, target)
    ood = _long(selected, OOD_SCORE_PREFIX, "metrics.ood/bal_acc")
    leaks = []
    if len(scores) and "tags.leaks_into_dataset" in scores.columns:
        flagged = scores[scores["tags.leaks_into_dataset"].isin(["true", "head"])]  # head: its head-based scores
        leaks = sorted(set(zip(flagged["tags.model"], flagged["tags.dataset"])))
    not_applicable: dict[str, set[str]] = {}
    if len(scores) and "tags.scores_not_applicable" in scores.columns:
        for model, listed in zip(scores["tags.model"], scores["tags.scores_not_applicable"]):
            for name in (listed or "").split(",") if isinstance(listed, str) else []:
                if name.strip():
                    not_applicable.setdefault(name.strip(), set()).add(model)
    return StudyTables(iid=iid, ood=ood, selected=selected, missing=missing, leaks=leaks,
                       not_applicable={k: sorted(v) for k, v in sorted(not_applicable.items())})


def has_finished_runs(study: str) -> bool:
    """Whether the study's score or fine-tune experiment holds a FINISHED run: without one there is nothing to
    read, and composing its manifest (seconds per cell) is skipped."""
    return any(tracking.has_finished_run(f"{study}/{stage}") for stage in ("score", "finetune"))


def study_tables(study: str, manifest: Manifest | None, *, select_metric: str = "best/val_bal_acc",
                 select_mode: str = "max", models: list[str] | None = None,
                 datasets: list[str] | None = None) -> StudyTables:
    """The tables of ``study``: exactly the ``manifest``'s cells, read from the tracking store; with
    ``manifest=None`` (``legacy=true``), the newest run per model and dataset of ``models`` x ``datasets`` (runs
    tracked before cell schema 2)."""
    score_runs = tracking.finished_frame(f"{study}/score")
    finetune_runs = tracking.finished_frame(f"{study}/finetune")
    select = {"select_metric": select_metric, "select_mode": select_mode}
    if manifest is None:
        print(f"[analyze] legacy=true: reading the newest FINISHED run per model and dataset of study {study!r}, "
              "whatever its settings (runs tracked before cell schema 2)", flush=True)
        return load_study(score_runs, finetune_runs, models=models, datasets=datasets, **select)
    print(f"[study] {study!r}: manifest of {len(manifest.score)} score and {len(manifest.finetune)} fine-tune cells",
          flush=True)
    tables = manifest_tables(manifest, score_runs, finetune_runs, **select)
    tables.digests = {cell.dataset: cell.data_digest for cell in manifest.score if cell.split == "train"}
    tables.manifest_id = manifest.id
    if tables.extra:
        print(f"[study] {tables.extra} FINISHED run(s) in the study's experiments are not cells of its manifest "
              "(other settings or data, or an older schema): not read", flush=True)
    return tables


class NoAnalysisRun(MedxferError, LookupError):
    """The study has no FINISHED analysis run to read."""


@dataclass
class AnalysisTables:
    """The tables of one analysis run; ``ood`` and ``ood_table`` are empty when the study has no OOD sets."""

    run_id: str
    iid: pd.DataFrame
    iid_table: pd.DataFrame
    ood: pd.DataFrame
    ood_table: pd.DataFrame
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)  # linear ensembles' weights per held-out dataset
    figures: list[Path] = field(default_factory=list)  # copied out by read_analysis(figures_dir=...)
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty without per-sample predictions
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved analyze config (grid, ensembles)


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
    read = read_analysis(run_id)
    if read is None:
        raise NoAnalysisRun(f"analysis run {run_id} of study {study!r} has no tables/correlations_iid.csv; "
                            f"run medxfer-analyze study={study} again")
    return read


def read_analysis(run_id: str, figures_dir: Path | None = None) -> AnalysisTables | None:
    """The tables an analysis run logged (None when it lacks ``tables/correlations_iid.csv``); with
    ``figures_dir``, its figures and summary tables are also copied there (the joined input tables
    ``table_*.csv`` stay in the run only) and listed in ``figures``."""
    frames: dict[str, pd.DataFrame] = {}
    figures: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in ("tables", "figures") if figures_dir is not None else ("tables",):
            for local in sorted(Path(tracking.download_artifact(run_id, folder, tmp)).iterdir()):
                if folder == "tables":
                    frames[local.stem] = pd.read_csv(local, float_precision="round_trip")
                if figures_dir is None or (folder == "tables" and local.name.startswith("table_")):
                    continue
                figures_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, figures_dir / local.name)
                if folder == "figures":
                    figures.append(figures_dir / local.name)
        if "correlations_iid" not in frames:
            return None
        try:
            config = yaml.safe_load(Path(tracking.download_artifact(run_id, "config.yaml", tmp)).read_text()) or {}
        except Exception:  # noqa: BLE001 - a run without its config: its tables are still its results
            config = {}
    empty = pd.DataFrame()
    return AnalysisTables(run_id, frames["correlations_iid"], frames.get("table_iid", empty),
                          frames.get("correlations_ood", empty), frames.get("table_ood", empty),
                          frames.get("ensemble_weights", empty), figures, frames.get("reliability", empty), config)


def predictions_of(run_id: str, tmp: str) -> Predictions | None:
    """The fine-tune run's ``predictions/test.npz`` (downloaded into ``tmp``), or None when the run predates
    per-sample predictions."""
    if f"{ARTIFACT_DIR}/test.npz" not in tracking.list_artifacts(run_id, ARTIFACT_DIR):
        return None
    return Predictions.load(tracking.download_artifact(run_id, f"{ARTIFACT_DIR}/test.npz", tmp))


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
    from medxfer.analysis.evidence import evidence_from_tables, usable_scores

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
    """The evidence computed from a study's long table ``iid`` (:func:`study_tables`, without
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
