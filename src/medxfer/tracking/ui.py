"""How to open the MLflow UI on a store: the command a person can run where they are, and the page to open.

MLflow 3.17's UI opens an experiment in its GenAI view (overview, traces) unless the browser's "Model training"
toggle is set, whatever the experiment's ``mlflow.experimentKind`` tag says (mlflow/mlflow#24498); a page address
with ``workflowType=machine_learning`` opens the runs table in any browser, so that is the address printed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from medxfer.tracking.location import sqlite_path
from medxfer.tracking.secrets import redact_text

#: Where ``mlflow ui`` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of experiment ``experiment_id`` in the MLflow UI at ``base``, as model training."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _in_checkout_of_this_store(db: Path | None, cwd: Path) -> bool:
    """Whether ``make ui`` in ``cwd`` serves ``db``: a medxfer checkout's Makefile, whose ``ui`` target serves
    ``<checkout>/mlruns/mlflow.db``."""
    makefile = cwd / "Makefile"
    if db is None or not makefile.is_file() or not (cwd / "pyproject.toml").is_file():
        return False
    try:
        text = makefile.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(re.search(r"^ui:", text, re.M)) and "medxfer" in text and db == (cwd / "mlruns" / "mlflow.db").absolute()


def _experiment_id(uri: str, names: list[str]) -> str | None:
    """The id of the first of ``names`` the store holds; None when none does or the store does not answer."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=uri)
        for name in names:
            exp = client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage != "deleted":
                return exp.experiment_id
    except (MlflowException, OSError):
        pass  # the hint then names the UI without a page
    return None


def ui_hint(uri: str, experiments: list[str] | None = None, cwd: Path | None = None) -> str:
    """One line telling how to browse the runs of tracking store ``uri`` from ``cwd`` (default: the working
    directory): the ``mlflow ui --backend-store-uri ...`` command for a database store (with ``make ui`` beside it
    only in the medxfer checkout whose store it is), and the page to open: the runs table of the first of
    ``experiments`` the store holds, else the UI's home. A password in the URI is masked."""
    cwd = Path.cwd() if cwd is None else cwd
    shown = redact_text(uri)
    server = uri.startswith(("http://", "https://"))
    experiment_id = _experiment_id(uri, experiments) if experiments else None
    base = shown if server else LOCAL_UI
    page = experiment_url(base, experiment_id) if experiment_id is not None else base
    if server:
        return f"browse the runs: open {page}"
    line = f"browse the runs: mlflow ui --backend-store-uri {shlex.quote(shown)}  (then open {page}"
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if _in_checkout_of_this_store(db, cwd):
        line += "; in this checkout: make ui"
    return line + ")"
