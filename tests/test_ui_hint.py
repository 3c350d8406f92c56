"""The study's closing line tells how to open the MLflow UI where the user is: a wheel user has no Makefile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from medxfer.tracking.ui import ui_hint

ROOT = Path(__file__).resolve().parents[1]


def test_outside_a_checkout_the_hint_is_the_mlflow_command_for_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    line = ui_hint(uri, cwd=tmp_path)
    assert f"mlflow ui --backend-store-uri {uri}" in line
    assert "make" not in line


def test_in_the_checkout_whose_store_it_is_make_ui_is_offered_too():
    line = ui_hint(f"sqlite:///{ROOT}/mlruns/mlflow.db", cwd=ROOT)
    assert f"mlflow ui --backend-store-uri sqlite:///{ROOT}/mlruns/mlflow.db" in line and "make ui" in line
    # the checkout's `make ui` serves its own mlruns/ only: another store gets the mlflow command alone
    assert "make ui" not in ui_hint("sqlite:////data/elsewhere/mlflow.db", cwd=ROOT)


def test_the_printed_command_is_one_a_shell_runs_as_is(tmp_path):
    folder = tmp_path / "my runs"
    line = ui_hint(f"sqlite:///{folder}/mlflow.db", cwd=tmp_path)
    command = line.split("browse the runs: ", 1)[1].split("  (", 1)[0]
    assert command == f"mlflow ui --backend-store-uri 'sqlite:///{folder}/mlflow.db'"
    if shutil.which("sh"):
        out = subprocess.run(["sh", "-c", f"set -- {command}; printf '%s\\n' \"$@\""], capture_output=True, text=True)
        assert out.stdout.splitlines() == ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"]


def test_a_server_is_opened_in_the_browser_and_a_password_is_never_printed():
    assert ui_hint("http://mlflow-host:5000") == "browse the runs: open http://mlflow-host:5000"
    line = ui_hint("postgresql://u:secret@dbhost:5432/mlflow")
    assert "mlflow ui --backend-store-uri" in line and "secret" not in line


def test_the_page_printed_is_the_studys_runs_table_as_model_training(tmp_path):
    """MLflow 3.17's UI opens experiments in its GenAI view unless the address says workflowType=machine_learning
    (tests/test_browser.py opens this address in Chromium)."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    score = client.create_experiment("s/score")
    line = ui_hint(uri, ["s/analysis", "s/score"], cwd=tmp_path)
    assert line.endswith(f"(then open http://127.0.0.1:5000/#/experiments/{score}/runs?workflowType=machine_learning)")
    analysis = client.create_experiment("s/analysis")
    assert f"/#/experiments/{analysis}/runs?workflowType=machine_learning)" in ui_hint(uri, ["s/analysis", "s/score"],
                                                                                      cwd=tmp_path)
    assert ui_hint(uri, ["other/score"], cwd=tmp_path).endswith("(then open http://127.0.0.1:5000)")
