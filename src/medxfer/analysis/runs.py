"""Read a study back from MLflow (``mlflow.search_runs``) into the long tables that :func:`correlate` takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import pandas as pd

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
    leaks: list[tuple[str, str]] = field(default_factory=list)  # (model, dataset): weights trained on overlapping data
    not_applicable: dict[str, list[str]] = field(default_factory=dict)  # score -> models it does not apply to


def _finished(experiment: str, filter_string: str = "") -> pd.DataFrame:
    if mlflow.get_experiment_by_name(experiment) is None:
        return pd.DataFrame()
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, order_by=["attributes.start_time DESC"])
    return runs


def _latest(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The newest run per key (runs are sorted newest first); forced reruns replace older values."""
    return runs.drop_duplicates(keys, keep="first") if len(runs) else runs


def select_trials(finetune: pd.DataFrame, metric: str = "best/val_bal_acc", mode: str = "max") -> pd.DataFrame:
    """Per (model, dataset) the fine-tuning run with the best ``metric`` (ties: the lower trial number)."""
    col = f"metrics.{metric}"
    if len(finetune) == 0:
        return finetune
    if col not in finetune.columns:
        raise ValueError(f"fine-tune runs have no metric {metric!r} to select trials by; metrics: "
                         f"{sorted(c[8:] for c in finetune.columns if c.startswith('metrics.'))}")
    if mode not in ("max", "min"):
        raise ValueError(f"select.mode={mode!r}; expected max or min")
    ft = finetune.dropna(subset=[col]).copy()
    ft["_trial"] = pd.to_numeric(ft.get("params.trial"), errors="coerce")
    ft = ft.sort_values([col, "_trial"], ascending=[mode == "min", True])
    return ft.drop_duplicates(["tags.model", "tags.dataset"], keep="first").drop(columns="_trial")


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
    study: str, *, models: list[str] | None = None, datasets: list[str] | None = None,
    select_metric: str = "best/val_bal_acc", select_mode: str = "max",
) -> StudyTables:
    """Query the study's score and fine-tune runs and join them per (model, dataset).

    In distribution: ``score/<name>`` of the ImageNet features on the training split vs the selected trial's
    ``test/bal_acc``. Out of distribution: the selected trial's ``ood_score/<name>`` vs its ``ood/bal_acc``.
    ``models``/``datasets`` restrict the study (None: whatever was tracked); cells without a FINISHED score
    run or fine-tune run are listed in ``missing``.
    """
    scores = _latest(_finished(f"{study}/score", "tags.split = 'iid'"), ["tags.model", "tags.dataset"])
    finetune = _finished(f"{study}/finetune")
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
    selected = select_trials(finetune, select_metric, select_mode)
    seen_m = set(models or []) | set(scores.get("tags.model", [])) | set(finetune.get("tags.model", []))
    seen_d = set(datasets or []) | set(scores.get("tags.dataset", [])) | set(finetune.get("tags.dataset", []))
    expected = {(m, d) for m in seen_m for d in seen_d}
    have_scores = set(zip(scores.get("tags.model", []), scores.get("tags.dataset", [])))
    have_ft = set(zip(selected.get("tags.model", []), selected.get("tags.dataset", [])))
    missing = [f"score run (iid) for model={m} dataset={d}" for m, d in sorted(expected - have_scores)]
    missing += [f"fine-tune run for model={m} dataset={d}" for m, d in sorted(expected - have_ft)]
    target = "metrics.test/bal_acc"
    if len(scores) and len(selected):
        joined = scores.merge(selected[["tags.model", "tags.dataset", target]], on=["tags.model", "tags.dataset"], how="inner")
    else:
        joined = pd.DataFrame()
    iid = _long(joined, SCORE_PREFIX, target)
    ood = _long(selected, OOD_SCORE_PREFIX, "metrics.ood/bal_acc")
    leaks = []
    if len(scores) and "tags.leaks_into_dataset" in scores.columns:
        flagged = scores[scores["tags.leaks_into_dataset"] == "true"]
        leaks = sorted(set(zip(flagged["tags.model"], flagged["tags.dataset"])))
    not_applicable: dict[str, set[str]] = {}
    if len(scores) and "tags.scores_not_applicable" in scores.columns:
        for model, listed in zip(scores["tags.model"], scores["tags.scores_not_applicable"]):
            for name in (listed or "").split(",") if isinstance(listed, str) else []:
                if name.strip():
                    not_applicable.setdefault(name.strip(), set()).add(model)
    return StudyTables(iid=iid, ood=ood, selected=selected, missing=missing, leaks=leaks,
                       not_applicable={k: sorted(v) for k, v in sorted(not_applicable.items())})
