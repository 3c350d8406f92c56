"""The results of a study as its analysis run logged them: one source for the notebook, the UI and the log.

The analysis run (``<study>/analysis``) holds the tables every reader should show: the long tables with the
ensembles and baselines added (``tables/table_iid.csv``, ``tables/table_ood.csv``) and the correlations computed
from them (``tables/correlations_iid.csv``, ``tables/correlations_ood.csv``). Recomputing them elsewhere gives a
different table as soon as the analysis options (ensembles, selection metric, bootstrap) differ.
"""

from __future__ import annotations

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
                for name in ("correlations_iid", "table_iid", "correlations_ood", "table_ood")}
    if read["correlations_iid"].empty:
        raise NoAnalysisRun(f"analysis run {run_id} of study {study!r} has no tables/correlations_iid.csv; "
                            f"run medxfer-analyze study={study} again")
    return AnalysisTables(run_id, read["correlations_iid"], read["table_iid"], read["correlations_ood"],
                          read["table_ood"])
