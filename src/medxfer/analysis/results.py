"""The results of a study as its analysis run logged them: one source for the notebook, the UI and the log.

The analysis run (``<study>/analysis``) holds the tables every reader should show: the long tables with the
ensembles and baselines added (``tables/table_iid.csv``, ``tables/table_ood.csv``) and the correlations computed
from them (``tables/correlations_iid.csv``, ``tables/correlations_ood.csv``). Recomputing them elsewhere gives a
different table as soon as the analysis options (ensembles, selection metric, bootstrap) differ.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medxfer.errors import MedxferError
from medxfer import tracking


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


def latest_analysis(study: str) -> AnalysisTables:
    """The tables of the newest FINISHED run of ``<study>/analysis`` (on the current tracking URI)."""
    experiment = f"{study}/analysis"
    runs = tracking.finished_frame(experiment)  # newest first
    if not len(runs):
        raise NoAnalysisRun(f"study {study!r} has no FINISHED analysis run in experiment {experiment!r} "
                            f"(tracking URI {tracking.current_uri()}); run medxfer-analyze study={study} "
                            "(or make study) first")
    run_id = str(runs.iloc[0]["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(_download(run_id, "tables", tmp))
        read = {name: pd.read_csv(folder / f"{name}.csv") if (folder / f"{name}.csv").is_file() else pd.DataFrame()
                for name in ("correlations_iid", "table_iid", "correlations_ood", "table_ood")}
    if read["correlations_iid"].empty:
        raise NoAnalysisRun(f"analysis run {run_id} of study {study!r} has no tables/correlations_iid.csv; "
                            f"run medxfer-analyze study={study} again")
    return AnalysisTables(run_id, read["correlations_iid"], read["table_iid"], read["correlations_ood"],
                          read["table_ood"])


def _download(run_id: str, path: str, dst: str) -> str:
    # a few small CSV files: MLflow's download progress bar would only add carriage returns to a log
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return tracking.download_artifact(run_id, path, dst)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before
