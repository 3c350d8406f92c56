"""notebooks/paper_figures.ipynb runs against the session's tracked study and shows the tau table and figures."""

from __future__ import annotations

import io
import shlex
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "paper_figures.ipynb"


def test_paper_figures_notebook_shows_the_analysis_runs_tables(study_project, tracked_study, monkeypatch):
    """The notebook reads the tables (with the ensembles) of the analysis run of its study config's manifest, so
    its tau table is that run's, even when a newer analysis run of another grid exists."""
    nbclient = pytest.importorskip("nbclient")
    from medxfer.results import latest_analysis
    from medxfer.workflows.study import analyze_study

    analyze_study(tracked_study.analyze_config("bootstrap.n=100"))
    logged = latest_analysis("default")
    # a newer analysis run of one of the datasets: not this grid's, so the notebook must not show it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one dataset: no leave-one-dataset-out ensemble, which is not tested here
        analyze_study(tracked_study.analyze_config("bootstrap.n=100", datasets=tracked_study.datasets[:1]))
    assert latest_analysis("default").run_id != logged.run_id
    monkeypatch.setenv("MEDXFER_ROOT", str(study_project))  # the notebook only reads the store
    monkeypatch.setenv("MEDXFER_STUDY", "default")
    monkeypatch.setenv("MEDXFER_OVERRIDES", shlex.join(tracked_study.grid_overrides()))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # one more cell prints what the notebook holds, to compare with what the analysis run logged
    nb.cells.append(nbformat.v4.new_code_cell('print("IID_JSON" + iid.to_json(orient="split", double_precision=15))'))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(study_project)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # in-distribution and OOD figures
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    # tau tables: every score, the ensembles, and every dataset of the study
    assert all(name in html for name in (*tracked_study.scores, "ens_rank", *tracked_study.datasets, "ALL"))
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    shown = pd.read_json(io.StringIO(printed.split("IID_JSON", 1)[1].strip()), orient="split")
    assert logged.run_id in printed
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), logged.iid.reset_index(drop=True),
                                  check_dtype=False, rtol=1e-12)
