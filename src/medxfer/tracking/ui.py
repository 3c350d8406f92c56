"""How to open the MLflow UI on a store: the command a person can run where they are."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from medxfer.tracking.location import sqlite_path
from medxfer.tracking.secrets import redact_text


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


def ui_hint(uri: str, cwd: Path | None = None) -> str:
    """One line telling how to browse the runs of tracking store ``uri`` from ``cwd`` (default: the working
    directory): the tracking server's address, or the ``mlflow ui --backend-store-uri ...`` command for a database
    store (with ``make ui`` beside it only in the medxfer checkout whose store it is). A password in the URI is
    masked."""
    cwd = Path.cwd() if cwd is None else cwd
    shown = redact_text(uri)
    if uri.startswith(("http://", "https://")):
        return f"browse the runs: open {shown} (the MLflow tracking server)"
    line = f"browse the runs: mlflow ui --backend-store-uri {shlex.quote(shown)}  (then open http://127.0.0.1:5000"
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if _in_checkout_of_this_store(db, cwd):
        line += "; in this checkout: make ui"
    return line + ")"
