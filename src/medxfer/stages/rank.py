"""The rank stage: which pretrained model should I fine-tune for my dataset?

For each model: the features of the dataset's training split (``iid``, the split the score stage scores), through
the same feature cache as ``medxfer-score`` (a second run, or a cell that ``medxfer-score`` already scored with
the same preprocessing, does no forward pass), then the requested score; the models are ranked by it (higher =
better, rank 1 = best). Beside the ranking stands the tau that score reached in a tracked study (Kendall tau-b
of the score with the balanced accuracy after fine-tuning), so the reader knows how far to trust it. One MLflow
run per call in ``<study>/rank``; it never skips.

The score is a registered score (:func:`medxfer.scores.available_scores`) or an ensemble of
``rank.ensemble_scores`` (see :mod:`medxfer.analysis.ensembles`): ``ens_rank`` (mean rank over the models),
``ens_z`` (mean z-score over the models) or ``ens_linear`` (ridge weights fitted on the tracked study's scores
and fine-tuned accuracies, applied to the z-scores of the models here).

Order of work, so that bad input fails before anything expensive: score and model names, weights of every
model → tracking store → dataset read and split → (ens_linear) weights from the study → per model: features
(cache or forward pass) and scores → ranking → tau from the study → the run.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from medxfer.errors import MedxferError
from medxfer.analysis.correlation import AnalysisError, UndefinedCorrelation, comparable, correlate
from medxfer.analysis.ensembles import (
    Ensemble,
    EnsembleWarning,
    add_ensembles,
    apply_pooling,
    fit_linear_pooling,
    mean_rank,
    mean_zscore,
)
from medxfer.results import analysis_runs, has_finished_runs, study_tables
from medxfer.config import config_dir
from medxfer.scores.isolated import single_thread
from medxfer import tracking
from medxfer.cells import hash_parts, preprocess_identity
from medxfer.tracking import cell_run, ensure_experiment, setup_tracking

#: Ensembles ``score=`` accepts, with their kind in :mod:`medxfer.analysis.ensembles`.
ENSEMBLES = {"ens_rank": "rank", "ens_z": "zscore", "ens_linear": "linear"}
SPLIT = "train"  # the training split, as the score stage (and the paper) scores it
NO_STUDY = "no tracked study"


class RankError(MedxferError, ValueError):
    """Bad input to the rank stage; the message says what was expected, what was found and what to do."""


# --- inputs ----------------------------------------------------------------------------------------------------

def registered_scores() -> list[str]:
    """Every registered score, opt-in ones included."""
    from medxfer.scores import available_scores

    return list(available_scores(include_opt_in=True))


def score_names(score: str, ensemble_scores: list[str] | None) -> list[str]:
    """The registered scores to compute for each model: ``[score]``, or an ensemble's scores."""
    registered = registered_scores()
    if score in ENSEMBLES:
        chosen = list(dict.fromkeys(ensemble_scores or []))
        if not chosen:
            raise RankError(f"score={score} combines rank.ensemble_scores, which is empty; give a list of scores "
                            f"from {registered}")
        unknown = [s for s in chosen if s not in registered]
        if unknown:
            raise RankError(f"rank.ensemble_scores: unknown score(s) {unknown}; registered scores: {registered}")
        return chosen
    if score not in registered:
        raise RankError(
            f"unknown score {score!r}; registered scores: {', '.join(registered)}; ensembles of "
            "rank.ensemble_scores: ens_rank (mean rank over the models), ens_z (mean z-score over the models), "
            "ens_linear (weights fitted on the tracked study's fine-tuned accuracies)")
    return [score]


def available_models() -> list[str]:
    """The model configs in ``conf/model/``."""
    return sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml"))


def model_configs(names: Any) -> dict[str, dict[str, Any]]:
    """Each model's config as ``medxfer-score model=<name>`` composes it, by name; unknown names are an error
    that lists the available ones."""
    from medxfer.workflows.grid import compose_config

    if isinstance(names, str):
        names = [names]
    names = list(names or [])
    available = available_models()
    if not names:
        raise RankError(f"models is empty; give a list of model configs, e.g. models=[efficientnet_lite0,"
                        f"efficientnet_lite1]; available: {available}")
    if any(not isinstance(n, str) for n in names):
        raise RankError(f"models must be a list of model config names; got {names!r}; available: {available}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RankError(f"model(s) {dup} given more than once in models={names}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise RankError(f"unknown model config(s) {unknown}; available model configs (conf/model/): {', '.join(available)}")
    return {n: OmegaConf.to_container(compose_config("score", [f"model={n}"]).model, resolve=True) for n in names}


def score_options(names: list[str], models: dict[str, dict[str, Any]],
                  options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model, the ``options`` of :func:`medxfer.scores.compute_scores`, as the score stage builds them
    (``rank.options``, checked before any work; ``imagenet_top1``'s ``top1`` from each model config)."""
    from medxfer.scores.options import score_options as stage_score_options

    if "imagenet_top1" in names:
        lacking = [m for m, mc in models.items() if mc.get("imagenet_top1") is None]
        if lacking:
            raise RankError(
                f"score imagenet_top1 ranks models by their ImageNet top-1 accuracy, the field imagenet_top1 of the "
                f"model config; model(s) {lacking} have none. Set it in conf/model/<name>.yaml, or pick another score")
    try:
        return {m: stage_score_options(options, mc, names, where="rank.options") for m, mc in models.items()}
    except ValueError as err:
        raise RankError(str(err)) from None


def dataset_csv(dataset: dict[str, Any]) -> Path | None:
    """The CSV file of a ``csv`` dataset (None for other sources); a missing file is an error naming it. Its
    columns are checked when it is read (the error names the file and the column)."""
    if dataset.get("source") != "csv":
        return None
    path = Path(str(dataset["root"])).expanduser() / str(dataset.get("csv") or "labels.csv")
    if not path.is_file():
        raise RankError(
            f"dataset CSV file {path} not found. Pass dataset=<path to your CSV> (columns "
            f"{dataset.get('image_col', 'image')}, {dataset.get('label_col', 'label')} and optionally a group column; "
            "image paths relative to the CSV's folder), or dataset=csv dataset.root=<folder> dataset.csv=<file name>")
    return path


# --- the tau of the score in a tracked study -----------------------------------------------------------------------

@dataclass
class StudyTau:
    """How well the score ranked models in a tracked study: Kendall tau-b of the score with the test balanced
    accuracy after fine-tuning, pairs counted within each dataset and pooled over the datasets, with its 95 %
    bootstrap interval over models. ``missing`` says why there is no tau (then ``tau`` is None)."""

    study: str
    tau: float | None = None
    tau_lo: float | None = None
    tau_hi: float | None = None
    n_models: int = 0
    n_datasets: int = 0
    source: str = ""
    missing: str | None = None

    def cell(self) -> str:
        """What the table's tau column shows."""
        if self.missing:
            return self.missing
        if self.tau is None or not math.isfinite(self.tau):
            return "undefined (constant score)"
        if self.tau_lo is None or not (math.isfinite(self.tau_lo) and math.isfinite(self.tau_hi)):
            return f"{self.tau:.2f} [n/a]"
        return f"{self.tau:.2f} [{self.tau_lo:.2f}, {self.tau_hi:.2f}]"

    def note(self, score: str) -> str:
        if self.missing == NO_STUDY:
            return (f"tau: study {self.study!r} has no score and fine-tune runs in this tracking store; run it "
                    "(make study) or point study=/tracking.uri= at one")
        if self.missing:
            return f"tau: {self.missing}"
        return (f"tau: Kendall tau-b of {score} with test balanced accuracy after fine-tuning in study {self.study!r}, "
                f"pooled over {self.n_datasets} dataset(s) x {self.n_models} model(s) ({self.source}); "
                "[95 % bootstrap interval over models]")


def study_tau(study: str, score: str, *, ensemble_scores: list[str] | None = None, alpha: float = 1e-3,
              select_metric: str = "best/val_bal_acc", select_mode: str = "max", n_boot: int = 1000,
              seed: int = 0, iid: pd.DataFrame | None = None, manifest_id: str | None = None) -> StudyTau:
    """The tau ``score`` reached in ``study``: from the latest FINISHED run of ``<study>/analysis`` when it has
    that score (for an ensemble: the same kind over the same scores), else computed with :func:`correlate` from
    the study's score and fine-tune runs (``iid``: the study's table, :func:`medxfer.results.study_tables`;
    ``manifest_id``: its manifest's, which the analysis run must carry);
    ``missing = "no tracked study"`` when there are none."""
    kind = ENSEMBLES.get(score)
    scores = list(ensemble_scores or []) if kind else []
    found = _tau_from_analysis(study, score, kind, scores, alpha, manifest_id)
    if found is not None:
        return found
    if iid is None:
        return StudyTau(study, missing=NO_STUDY)
    return _tau_from_runs(iid, study, score, kind, scores, alpha, n_boot, seed)


def _tau_from_analysis(study: str, score: str, kind: str | None, scores: list[str], alpha: float,
                       manifest_id: str | None) -> StudyTau | None:
    """The tau of the newest analysis run of exactly the study's manifest (same cells), if it has ``score``."""
    if manifest_id is None:
        return None
    runs = analysis_runs(study, manifest_id)
    if not len(runs):
        return None
    run = runs.iloc[0]
    column = f"metrics.tau/ALL/{score}"
    if column not in runs.columns or pd.isna(run[column]):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table = pd.read_csv(tracking.download_artifact(run["run_id"], "tables/correlations_iid.csv", tmp))
        except Exception:  # an analysis run without its table: no interval, still its tau
            table = pd.DataFrame(columns=["dataset", "score"])
        if kind is not None and not _same_ensemble(run["run_id"], score, kind, scores, alpha, table, tmp):
            return None
    row = table[(table["dataset"] == "ALL") & (table["score"] == score)]
    lo, hi = (float(row["tau_lo"].iloc[0]), float(row["tau_hi"].iloc[0])) if len(row) else (None, None)

    def count(name: str) -> int:
        value = run.get(f"params.{name}")
        return int(value) if value is not None and not pd.isna(value) else 0

    return StudyTau(study, float(run[column]), lo, hi, n_models=count("n_models"), n_datasets=count("n_datasets"),
                    source=f"analysis run {run['run_id'][:8]}")


def _same_ensemble(run_id: str, name: str, kind: str, scores: list[str], alpha: float, table: pd.DataFrame,
                   tmp: str) -> bool:
    """Whether the analysis run's ensemble ``name`` is ours: same kind, same scores, same ridge penalty."""
    try:
        path = tracking.download_artifact(run_id, "config.yaml", tmp)
        config = yaml.safe_load(Path(path).read_text()) or {}
    except Exception:
        return False
    ensembles = config.get("ensembles") or {}
    spec = ensembles.get(name) or {}
    if spec.get("kind") != kind:
        return False
    if kind == "linear" and not math.isclose(float(spec.get("alpha", 1e-3)), alpha):
        return False
    theirs = spec.get("scores")
    if theirs is None:  # every score of the analysis' table; the baselines are added after, never ensembled
        from medxfer.analysis.baselines import BASELINES

        theirs = set(table.loc[table["dataset"] == "ALL", "score"]) - set(ensembles) - set(BASELINES)
    return set(theirs) == set(scores)


def _tau_from_runs(iid: pd.DataFrame, study: str, score: str, kind: str | None, scores: list[str], alpha: float,
                   n_boot: int, seed: int) -> StudyTau:
    if not len(iid):
        return StudyTau(study, missing=NO_STUDY)
    present = set(iid["score"])
    lacking = [s for s in (scores if kind else [score]) if s not in present]
    if lacking:
        return StudyTau(study, missing=f"{', '.join(lacking)} not in study {study!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnsembleWarning)
        warnings.simplefilter("ignore", UndefinedCorrelation)
        if kind:
            try:
                iid = add_ensembles(iid, [Ensemble(score, kind, tuple(scores), alpha)], allow_incomplete=True).table
            except AnalysisError as err:
                return StudyTau(study, missing=f"not computable in study {study!r}: {err}")
        t = iid[iid["score"] == score]
        t = t[t.groupby("dataset")["model"].transform("nunique") >= 2]
        if not len(t):
            return StudyTau(study, missing=f"study {study!r} has fewer than 2 models per dataset")
        corr = correlate(t, n_boot=n_boot, seed=seed)
    row = corr[corr["dataset"] == "ALL"].iloc[0]
    return StudyTau(study, float(row["tau"]), float(row["tau_lo"]), float(row["tau_hi"]),
                    n_models=t["model"].nunique(), n_datasets=t["dataset"].nunique(),
                    source="computed from its score and fine-tune runs")


def linear_weights(study: str, iid: pd.DataFrame, scores: list[str], *, alpha: float) -> pd.Series:
    """``ens_linear``'s weights: :func:`fit_linear_pooling` on the study's scores and selected fine-tuned
    accuracies (``iid``, the study's table from :func:`medxfer.results.study_tables`); a study without tracked data is an error
    that says what to do."""
    if iid is None or not len(iid):
        raise RankError(
            f"score=ens_linear fits its weights on the tracked study {study!r}, which has no (score run, fine-tune "
            "run) pair in this tracking store. Run the study first (make study, or medxfer-score and "
            "medxfer-finetune), point study=... / tracking.uri=... at a study that has them, or pick a score that "
            "needs no study: ens_rank, ens_z or a single score")
    lacking = [s for s in scores if s not in set(iid["score"])]
    if lacking:
        raise RankError(
            f"score=ens_linear: the score runs of study {study!r} lack {lacking} (they have "
            f"{sorted(set(iid['score']))}); set rank.ensemble_scores to scores the study has, or score them there")
    try:
        return fit_linear_pooling(iid, scores, alpha=alpha, allow_incomplete=True)
    except AnalysisError as err:
        raise RankError(f"score=ens_linear: cannot fit weights on study {study!r}: {err}") from err


# --- the stage -------------------------------------------------------------------------------------------------

@dataclass
class RankResult:
    """``table``: one row per model, best first, columns ``rank, model, dataset, score, value, tau, tau_lo,
    tau_hi`` (the tau of the score in the tracked study, the same on every row) and, for an ensemble,
    ``score/<name>`` per combined score. ``weights``: ens_linear's weights per score (None otherwise)."""

    table: pd.DataFrame
    score: str
    dataset: str
    n_samples: int
    n_classes: int
    study_tau: StudyTau
    run_id: str
    experiment: str
    weights: pd.Series | None = None
    cached: dict[str, bool] = field(default_factory=dict)

    @property
    def best(self) -> list[str]:
        """The model(s) ranked 1 (several when tied)."""
        return [str(m) for m in self.table.loc[self.table["rank"] == 1, "model"]]

    def report(self) -> str:
        """The ranking as an aligned text table, with where the tau came from."""
        tau_head = f"tau in study {self.study_tau.study!r} [95% CI]"
        rows = [("rank", "model", self.score, tau_head)]
        rows += [(str(r["rank"]), str(r["model"]), f"{r['value']:.6g}", self.study_tau.cell())
                 for _, r in self.table.iterrows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
        lines.insert(1, "-" * len(max(lines, key=len)))
        return "\n".join([*lines, self.study_tau.note(self.score)])


def run_rank(cfg: DictConfig, overrides: list[str] | None = None) -> RankResult:
    """Rank ``cfg.models`` for ``cfg.dataset`` by ``cfg.rank.score``; print and log the ranking, return it."""
    from medxfer.data.datasets import check_scoreable, load_dataset
    from medxfer.models.extract import FeatureCache
    from medxfer.models.zoo import ModelSpec, resolve_weights
    from medxfer.scores import ScoreWarning

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    r, study = c["rank"], c["study"]
    score = r["score"]
    kind = ENSEMBLES.get(score)
    names = score_names(score, r.get("ensemble_scores"))
    models = model_configs(c["models"])
    csv_file = dataset_csv(c["dataset"])
    options = score_options(names, models, r.get("options"))
    specs = {m: ModelSpec.from_config(mc) for m, mc in models.items()}
    weights_sources = {m: resolve_weights(spec, cache_dir=c["paths"]["cache_dir"], allow_noncommercial=bool((c.get("zoo") or {}).get("allow_noncommercial")))
                       for m, spec in specs.items()}  # no weights: fail before any work

    setup_tracking(c["tracking"]["uri"])
    experiment = c["tracking"]["experiment"]
    experiment_id = ensure_experiment(experiment, c["tracking"].get("artifact_root"))
    dataset_cfg = {**c["dataset"], "ood": None}  # only the training split is scored
    data = load_dataset(dataset_cfg)
    table = data.train
    check_scoreable(table)
    dataset_name = c["dataset"]["name"]
    where = f" ({csv_file})" if csv_file else ""
    n_classes = int(len(np.unique(table.labels)))
    sel, boot = c["select"], c["bootstrap"]
    # ens_linear reads the study once: for its weights here, and for the tau when no analysis run has it
    study_iid, excluded, other_settings, manifest_id = _study_iid(c, table)
    if other_settings and kind == "linear":
        raise RankError(f"score=ens_linear: {other_settings}")
    pooling = linear_weights(study, study_iid, names, alpha=float(r["alpha"])) if kind == "linear" else None
    if excluded:
        print(f"[rank] the ranked data is dataset {', '.join(excluded)} of study {study!r} (same contents): left out of "
              "the study table the tau and ens_linear's weights come from", flush=True)
    print(f"[rank] dataset {dataset_name}{where}: {SPLIT} (training) split, {len(table)} images, {n_classes} classes; "
          f"{len(models)} model(s), score {score}" + (f" of {names}" if kind else ""), flush=True)

    cache = FeatureCache(c["paths"]["cache_dir"] + "/features")
    tags = {"stage": "rank", "study": study, "dataset": dataset_name, "score": score, "model": "all", "split": SPLIT,
            "cell": hash_parts({"stage": "rank", "models": list(models), "dataset": dataset_name,
                             "split_digest": table.digest(), "score": score, "scores": names,
                             "preprocess": preprocess_identity(c["preprocess"])})}
    if csv_file:
        tags["dataset_csv"] = str(csv_file)
    ours = (ScoreWarning, EnsembleWarning)
    with cell_run(experiment_id, run_name=f"rank-{dataset_name}-{score}", tags=tags, config=c, overrides=overrides) as run:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ScoreWarning)
            warnings.simplefilter("always", EnsembleWarning)
            values, cached = {}, {}
            for i, (m, spec) in enumerate(specs.items(), 1):
                t0 = time.perf_counter()
                feats, cached[m] = _split_features(spec, weights_sources[m], table, dataset_name, c, cache,
                                                   progress=f"[rank] {i}/{len(specs)} {m}")
                with single_thread(bool(r.get("deterministic", True))):
                    values[m] = _compute(feats, table.labels, names, r.get("device"), options[m], m)
                shown = ", ".join(f"{k}={v:.6g}" for k, v in values[m].items())
                print(f"[rank] {i}/{len(specs)} {m}: {shown} (features "
                      f"{'from the cache' if cached[m] else 'extracted'}, {time.perf_counter() - t0:.1f} s)", flush=True)
            ranked = _rank_table(values, names, score, kind, pooling, dataset_name)
            tau = StudyTau(study, missing=other_settings) if other_settings else \
                study_tau(study, score, ensemble_scores=names if kind else None, alpha=float(r["alpha"]),
                            select_metric=sel["metric"], select_mode=sel["mode"], n_boot=int(boot["n"]),
                            seed=int(boot["seed"]), iid=study_iid, manifest_id=manifest_id)
        for w in caught:  # other warnings are shown as usual
            if not issubclass(w.category, ours):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ours)))
        ranked["tau"], ranked["tau_lo"], ranked["tau_hi"] = tau.tau, tau.tau_lo, tau.tau_hi
        ranked = ranked[["rank", "model", "dataset", "score", "value", "tau", "tau_lo", "tau_hi",
                         *[col for col in ranked.columns if col.startswith("score/")]]]
        _log(ranked, tau, pooling, notes, n_samples=len(table), n_classes=n_classes)
    for note in notes:
        print(f"[rank] note: {note}", flush=True)
    result = RankResult(ranked, score, dataset_name, len(table), n_classes, tau, run.info.run_id, experiment,
                        pooling, cached)
    print(result.report(), flush=True)
    best = result.best[0] if len(result.best) == 1 else " and ".join(result.best) + f" (tied on {score})"
    print(f"[rank] best: {best}. MLflow run {result.run_id} in experiment {experiment}", flush=True)
    caution = trust_caution(tau, score)
    if caution:
        print(f"[rank] caution: {caution}", flush=True)
    return result


def trust_caution(tau: "StudyTau", score: str) -> str | None:
    """A sentence of caution when the study gives no reason to trust ``score``'s ranking: no tau, a negative tau,
    or an interval that covers 0 (indistinguishable from a random ranking)."""
    if tau.missing or tau.tau is None or not math.isfinite(tau.tau):
        return (f"there is no measured tau for {score} under these settings, so nothing says this ranking predicts "
                "fine-tuned accuracy; fine-tune the top models before choosing")
    if tau.tau < 0:
        return (f"in study {tau.study!r}, {score} ranked models opposite to their fine-tuned accuracy (tau "
                f"{tau.tau:.2f}); do not choose by this ranking")
    if tau.tau_lo is not None and math.isfinite(tau.tau_lo) and tau.tau_lo <= 0:
        return (f"in study {tau.study!r}, {score}'s tau {tau.tau:.2f} has an interval [{tau.tau_lo:.2f}, "
                f"{tau.tau_hi:.2f}] that covers 0: indistinguishable from a random ranking; fine-tune the top models "
                "before choosing")
    return None


def _study_iid(c: dict[str, Any], table: Any) -> tuple[pd.DataFrame | None, list[str], str | None, str | None]:
    """The study's in-distribution table (its manifest's cells) without the dataset being ranked, matched by the
    content digest of its training split (ens_linear must not fit its weights on the accuracies it is judged by);
    None when the study has no tracked runs. The third value says why the study's numbers do not apply (it scored
    with other preprocessing or score options than this ranking), else None."""
    from medxfer.cells import digest_store, table_digest

    from medxfer.workflows.grid import common_overrides, compose_config, study_manifest

    try:  # the study's grid as medxfer-analyze composes it (rank.study_overrides: e.g. [experiment=paper])
        if not has_finished_runs(c["study"]):
            return None, [], None, None
        study = OmegaConf.to_container(
            compose_config("analyze", [*common_overrides(c), *(c["rank"].get("study_overrides") or [])]), resolve=True)
        tables = study_tables(study["study"], None if study.get("legacy") else study_manifest(study),
                              select_metric=study["select"]["metric"], select_mode=study["select"]["mode"],
                              models=study["models"], datasets=study["datasets"])
        other = _other_settings(c, study) if len(tables.iid) else None
        if other:  # the study has runs, but of other settings than this ranking's
            return None, [], other, None
    except Exception as err:  # noqa: BLE001 - a study that cannot be read gives no tau, not a failed ranking
        print(f"[rank] cannot read study {c['study']!r} ({type(err).__name__}: {err}); no tau", flush=True)
        return None, [], None, None
    if not len(tables.iid):
        return None, [], None, tables.manifest_id
    mine = table_digest(table, digest_store(c["paths"]["cache_dir"]))
    excluded = sorted(d for d, digest in tables.digests.items() if digest == mine)
    iid = tables.iid[~tables.iid["dataset"].isin(excluded)]
    return iid, excluded, None, tables.manifest_id


def _other_settings(c: dict[str, Any], study: dict[str, Any]) -> str | None:
    """Why the study's taus are not this ranking's: the study's score cells used other preprocessing or non-default
    score options (compared on the study's first cell, as composed for it); None when they agree."""
    from medxfer.workflows.grid import compose_config, score_overrides
    from medxfer.scores.options import non_default_options, score_names
    from medxfer.scores.options import score_options as checked

    if not study["models"] or not study["datasets"]:
        return None
    sc = OmegaConf.to_container(compose_config("score", score_overrides(study, study["models"][0], study["datasets"][0])),
                                resolve=True)
    if sc["preprocess"] != c["preprocess"]:
        def shown(p: dict[str, Any]) -> str:
            return " ".join(f"preprocess.{k}={v}" for k, v in p.items() if v is not None) or "timm's defaults"

        return (f"study {c['study']!r} scored with {shown(sc['preprocess'])}, this ranking with "
                f"{shown(c['preprocess'])}: the study's tau is not this ranking's; pass the study's preprocessing "
                "(e.g. preprocess=smoke for the default study) to rank as it scored")
    names = score_names(sc["score"]["names"])
    theirs = non_default_options(checked(sc["score"].get("options"), sc["model"], names))
    mine = non_default_options(c["rank"].get("options") or {})
    if any(theirs.get(k) != v for k, v in mine.items()) or any(mine.get(k) != v for k, v in theirs.items()):
        return f"study {c['study']!r} scored with score options {theirs}, this ranking with {mine}: no tau for them"
    return None


def _split_features(spec, weights, table, dataset_name: str, c: dict[str, Any], cache, *, progress: str):
    """Features of the training split through the score stage's feature cache (same key, so a cell
    ``medxfer-score`` scored is reused). Returns ``(features, cached)``."""
    from medxfer.data.transforms import resolve_preprocess
    from medxfer.models.zoo import create_model, model_data_config
    from medxfer.cells import digest_store, table_digest, weights_identity
    from medxfer.data.decoded import decoded_cache_for
    from medxfer.models.features import split_features

    model = create_model(spec, weights)
    preprocess = resolve_preprocess(model_data_config(model, spec), c["preprocess"])
    print(f"{progress}: features of {len(table)} images ({preprocess.input_size} px), cached or extracted", flush=True)
    digests = digest_store(c["paths"]["cache_dir"])
    data_digest = table_digest(table, digests)
    return split_features(model, spec, weights_identity(spec, weights, digests), table, data_digest, dataset_name,
                          SPLIT, preprocess, cache, c["extract"],
                          decoded=decoded_cache_for(c["extract"], c["paths"]["cache_dir"]))


def _compute(feats, labels, names: list[str], device: str | None, options: dict, model: str) -> dict[str, float]:
    from medxfer.scores import ScoreError, compute_scores

    try:
        return compute_scores(feats.features, labels, feats.probs, names, device=device, options=options or None)
    except ScoreError as err:
        raise RankError(f"model {model}: {err}") from err


def _rank_table(values: dict[str, dict[str, float]], names: list[str], score: str, kind: str | None,
                pooling: pd.Series | None, dataset: str) -> pd.DataFrame:
    """One row per model with its value of ``score`` and its rank (1 = highest value; ties share the best rank;
    values compare at 10 significant digits, as in the analysis), best first."""
    models = list(values)
    if kind is None:
        value = pd.Series([values[m][score] for m in models], index=models, dtype=float)
    else:
        long = pd.DataFrame([{"dataset": dataset, "model": m, "score": s, "value": values[m][s]}
                             for m in models for s in names])
        if kind == "rank":
            pooled = mean_rank(long, names)
        elif kind == "zscore":
            pooled = mean_zscore(long, names)
        else:
            pooled = apply_pooling(long, pooling)
        value = pooled.set_index("model")["value"].reindex(models).astype(float)
    frame = pd.DataFrame({"model": models, "dataset": dataset, "score": score, "value": value.to_numpy()})
    frame["rank"] = comparable(frame["value"]).rank(ascending=False, method="min").astype(int)
    if kind is not None:
        for s in names:
            frame[f"score/{s}"] = [values[m][s] for m in models]
    return frame.sort_values(["rank", "model"], kind="stable").reset_index(drop=True)


def _log(ranked: pd.DataFrame, tau: StudyTau, pooling: pd.Series | None, notes: list[str], *, n_samples: int,
         n_classes: int) -> None:
    tracking.log_params({"n_samples": n_samples, "n_classes": n_classes, "n_models": len(ranked)})
    metrics = {}
    for _, row in ranked.iterrows():
        metrics[f"rank/{row['model']}"] = float(row["rank"])
        metrics[f"score/{row['model']}"] = float(row["value"])
    for name in ("tau", "tau_lo", "tau_hi"):
        value = getattr(tau, name)
        if value is not None and math.isfinite(value):
            metrics[f"study/{name}"] = float(value)
    tracking.log_metrics(metrics)
    tracking.set_tags({"best_model": ",".join(ranked.loc[ranked["rank"] == 1, "model"].astype(str)),
                                   "tau_source": tau.source or tau.missing or ""})
    tracking.log_text(ranked.to_csv(index=False), "rank.csv")
    if notes:
        tracking.log_text("\n".join(notes) + "\n", "warnings.txt")
    if pooling is not None:
        tracking.log_text(pooling.rename("weight").to_frame().to_csv(), "ensemble_weights.csv")
