"""notebooks/paper_figures.ipynb runs against a small tracked study and shows the tau table and figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from conftest import log_fake_study

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "paper_figures.ipynb"


def test_paper_figures_notebook_executes(project, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    log_fake_study(project, study="nb")
    monkeypatch.setenv("MEDXFER_STUDY", "nb")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(project)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # in-distribution and OOD figures
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "alpha" in html and "beta" in html and "d1" in html and "ALL" in html  # tau tables
