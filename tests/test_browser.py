"""The MLflow UI as a user sees it, in headless Chromium: the runs of a study written by the real stages.

Screenshots go to the test's tmp folder and, when ``MEDXFER_TEST_ARTIFACTS`` is set, are copied there.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import mlflow
import pytest

from browser import Browser, chromium_path
from conftest import png_width
from servers import start_mlflow_server

from medxfer.tracking.ui import experiment_url, ui_hint

pytestmark = [
    pytest.mark.slow,  # the session's study, an analysis, an MLflow server and a browser: minutes
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)"),
]


def _keep(shot: Path) -> Path:
    folder = os.environ.get("MEDXFER_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
    return shot


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_mlflow_ui_shows_the_runs_a_user_needs(study_project, tracked_study, tmp_path):
    from medxfer.workflows.study import analyze_study

    analysis = analyze_study(tracked_study.analyze_config("bootstrap.n=100"))
    uri = f"sqlite:///{study_project}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    score_exp = mlflow.get_experiment_by_name("default/score")
    score_runs = mlflow.search_runs(experiment_ids=[score_exp.experiment_id],
                                    filter_string="attributes.status = 'FINISHED'")
    assert len(score_runs) >= 2 * len(tracked_study.models)
    analysis_run = client.get_run(analysis.run_id)
    figures = [p for p in _artifact_files(client, analysis.run_id) if p.endswith(".png")]
    assert figures, "the analysis run logged no figure"
    shots = tmp_path / "screenshots"

    server = start_mlflow_server(uri, study_project / "mlruns" / "artifacts", tmp_path / "mlflow-server.log",
                                 {**os.environ, "MLFLOW_TRACKING_URI": uri})
    try:
        with Browser() as browser:
            # each experiment is model training (its kind tag), and the page the study's closing line prints opens
            # its runs table, not MLflow 3's GenAI overview / traces / evaluation view (which a bare experiment
            # address opens in a fresh browser in MLflow 3.17, whatever the tag: mlflow/mlflow#24498)
            for exp in (score_exp, client.get_experiment(analysis_run.info.experiment_id)):
                assert exp.tags.get("mlflow.experimentKind") == "custom_model_development", exp.tags
                browser.open(experiment_url(server.uri, exp.experiment_id))
                text = browser.wait_for("Run Name")
                url = browser.evaluate("location.href")
                assert f"/experiments/{exp.experiment_id}/runs" in url and "workflowType=machine_learning" in url, url
                assert "Model registry" in text and "Agent versions" not in text, "the UI shows the GenAI view"
            _keep(browser.screenshot(shots / "0-analysis-experiment-as-training.png"))
            # the page checked is the one the closing line prints for this store (there on mlflow ui's own port)
            assert experiment_url("http://127.0.0.1:5000", exp.experiment_id) in ui_hint(uri, [exp.name])

            # the experiment's runs table: every score run by its name
            browser.open(f"{server.uri}/#/experiments/{score_exp.experiment_id}/runs")
            browser.wait_for(*score_runs["tags.mlflow.runName"], "Run Name")
            _keep(browser.screenshot(shots / "1-score-experiment.png"))

            # one score run: its name and a score with its value
            run = score_runs.sort_values("tags.mlflow.runName").iloc[0]
            logme = float(run["metrics.score/logme"])
            browser.open(f"{server.uri}/#/experiments/{score_exp.experiment_id}/runs/{run['run_id']}")
            text = browser.wait_for(run["tags.mlflow.runName"], "score/logme")
            assert repr(logme) in text or f"{logme:.4g}" in text, f"score/logme={logme!r} is not on the run page"
            _keep(browser.screenshot(shots / "2-score-run.png"))

            # the analysis run: its name, its description when the stage writes one, its tau metrics
            exp_id = analysis_run.info.experiment_id
            browser.open(f"{server.uri}/#/experiments/{exp_id}/runs/{analysis.run_id}")
            text = browser.wait_for(analysis_run.info.run_name, "tau/")
            note = analysis_run.data.tags.get("mlflow.note.content")
            if note:  # rendered as markdown: each line's words are on the page (table cells become separate cells)
                plain = re.sub(r"!?\[([^]]*)\]\([^)]*\)", r"\1", note)  # links and images show their text
                plain = re.sub(r"[*`#>]", "", plain)
                plain = re.sub(r"(?<!\w)_+|_+(?!\w)", "", plain)  # emphasis only: names keep their underscores
                words = [w.strip(" -") for line in plain.splitlines() for w in line.split("|")]
                words = [w for w in words if w and not set(w) <= set(":- ")][:40]
                missing = [w for w in words if " ".join(w.split()) not in " ".join(text.split())]
                assert not missing, f"the analysis description's text is not on the page: {missing}"
            _keep(browser.screenshot(shots / "3-analysis-run.png"))

            # its artifacts: the figures folder lists a figure, and the figure opens
            browser.open(f"{server.uri}/#/experiments/{exp_id}/runs/{analysis.run_id}/artifacts")
            folder, name = figures[0].rsplit("/", 1) if "/" in figures[0] else ("", figures[0])
            browser.wait_for(folder or name)
            if folder:
                assert browser.click_text(folder), f"no '{folder}' entry to open in the artifact tree"
                browser.wait_for(name)
            assert browser.click_text(name)
            deadline = time.monotonic() + 60
            # the viewer fetches the file and shows it from a blob: URL, so the figure is the loaded image as wide
            # as the PNG (the UI's own icons are a few dozen pixels)
            width = png_width(client.download_artifacts(analysis.run_id, figures[0], str(tmp_path)))
            shown = f"Array.from(document.images).some(i => i.complete && i.naturalWidth === {width})"
            while not browser.evaluate(shown) and time.monotonic() < deadline:
                time.sleep(0.5)
            _keep(browser.screenshot(shots / "4-analysis-figure.png"))
            images = browser.evaluate("Array.from(document.images).map(i => [i.src.slice(0, 60), i.naturalWidth])")
            assert browser.evaluate(shown), (f"the figure {figures[0]} ({width} px wide) did not render in the artifact "
                                             f"viewer; images on the page: {images}")
    finally:
        server.stop()
