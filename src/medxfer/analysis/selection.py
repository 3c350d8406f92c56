"""Which fine-tuning trial counts per (model, dataset): one rule, used by the analysis and by ``finetune.keep=best``.

The trial with the best mean of the selection metric over its seed replicates wins; ties go to the lower mean
``best/val_loss``, then the lower trial number, then the earlier run (an original over a reproduction of it).
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

#: The metric that picks the trial: the evaluated checkpoint's validation balanced accuracy.
SELECTION_METRIC = "best/val_bal_acc"
_KEYS = ["tags.model", "tags.dataset"]


def trial_order(metric: Mapping[int, float], val_loss: Mapping[int, float], mode: str = "max") -> list[int]:
    """Trials best first by the rule: the selection metric (highest first for ``mode=max``), then the lower
    validation loss, then the lower trial number. A trial whose metric is NaN comes last; a NaN loss (a diverged
    trial) counts as the highest."""
    if mode not in ("max", "min"):
        raise ValueError(f"select.mode={mode!r}; expected max or min")
    sign = -1.0 if mode == "max" else 1.0

    def key(trial: int) -> tuple[bool, float, float, int]:
        m, loss = float(metric[trial]), float(val_loss.get(trial, math.nan))
        return (math.isnan(m), 0.0 if math.isnan(m) else sign * m, math.inf if math.isnan(loss) else loss, trial)

    return sorted(metric, key=key)


def select_trials(runs: pd.DataFrame, metric: str = SELECTION_METRIC, mode: str = "max") -> pd.DataFrame:
    """Per (model, dataset), every run (one per seed) of the selected trial.

    ``runs`` is a frame of FINISHED fine-tune runs as :func:`mlflow.search_runs` returns them (columns
    ``tags.model``, ``tags.dataset``, ``tags.trial`` or ``params.trial``, ``metrics.<metric>``,
    ``metrics.best/val_loss``, ``start_time``); runs without the metric are left out.
    """
    col = f"metrics.{metric}"
    if len(runs) == 0:
        return runs
    if col not in runs.columns:
        raise ValueError(f"fine-tune runs have no metric {metric!r} to select trials by; metrics: "
                         f"{sorted(c[8:] for c in runs.columns if c.startswith('metrics.'))}")
    ft = runs.dropna(subset=[col]).copy()
    if len(ft) == 0:
        return ft
    trial = ft["tags.trial"] if "tags.trial" in ft.columns else ft.get("params.trial")
    ft["_trial"] = pd.to_numeric(trial, errors="coerce")
    ft["_loss"] = ft["metrics.best/val_loss"] if "metrics.best/val_loss" in ft.columns else 0.0
    per_trial = ft.groupby([*_KEYS, "_trial"], as_index=False).agg(
        _metric=(col, "mean"), _loss=("_loss", "mean"))
    best = pd.DataFrame(
        [(*keys, trial_order(dict(zip(g["_trial"], g["_metric"])), dict(zip(g["_trial"], g["_loss"])), mode)[0])
         for keys, g in per_trial.groupby(_KEYS, sort=False)],
        columns=[*_KEYS, "_trial"])
    chosen = ft.merge(best, on=[*_KEYS, "_trial"], how="inner")
    return chosen.drop(columns=["_trial", "_loss"]).reset_index(drop=True)


def selected_run(runs: pd.DataFrame, metric: str = SELECTION_METRIC, mode: str = "max") -> str | None:
    """The run id whose checkpoint ``keep=best`` keeps among one search's runs: the earliest run of the selected
    trial (one search has one seed, so one run per trial unless a trial was rerun)."""
    chosen = select_trials(runs, metric, mode)
    if len(chosen) == 0:
        return None
    if "start_time" in chosen.columns:
        chosen = chosen.sort_values("start_time")
    return str(chosen["run_id"].iloc[0])
