"""MLflow setup and the run schema of ARCHITECTURE.md: experiments, cell runs, finished-cell lookups.

Only this module talks to the tracking store directly; the stages call these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medxfer.tracking.retry import retry_locked
from medxfer.tracking.secrets import redact, redact_text

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "lightning", "mlflow", "numpy", "scikit-learn", "medxfer")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def setup_tracking(uri: str) -> str:
    """Point MLflow at ``uri`` and check that the store answers, before any work starts.

    A ``sqlite:///`` URI gets its folder created. Returns the URI.
    """
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = Path(uri[len("sqlite:///"):])
        db_path.parent.mkdir(parents=True, exist_ok=True)
    if parsed.scheme in ("http", "https"):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise TrackingError(
            f"cannot reach the MLflow tracking store tracking.uri={redact_text(uri)!r}: "
            f"{type(err).__name__}: {redact_text(str(err))[:300]}"
        ) from None
    return uri


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """Ask a tracking server's /health endpoint once, instead of MLflow's minutes of retries."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"cannot reach the MLflow tracking store tracking.uri={redact_text(uri)!r}: {redact_text(str(err))}"
        ) from None


def ensure_experiment(name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created (with artifacts under ``artifact_root/<name>``) if missing.

    Safe when several processes race to create it: the loser reads the winner's experiment.
    """
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted in the tracking store; restore it or use another study=")
        return exp.experiment_id
    location = None
    if artifact_root:
        location = (Path(artifact_root) / name.replace("/", "-")).resolve().as_uri() if "://" not in artifact_root \
            else f"{artifact_root.rstrip('/')}/{name.replace('/', '-')}"
    try:
        return retry_locked(client.create_experiment, name, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def cell_id(parts: dict[str, Any]) -> str:
    """A short stable hash of what defines a cell (model, dataset, split, scores, preprocessing...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_finished_run(experiment_id: str, cell: str) -> str | None:
    """The id of a FINISHED run of ``cell`` in the experiment, or None."""
    runs = retry_locked(
        MlflowClient().search_runs,
        [experiment_id], filter_string=f"tags.cell = '{cell}' and attributes.status = 'FINISHED'", max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process of this host that no longer exists (e.g. a sweep
    killed with SIGKILL), so they are retried and never mistaken for work in progress. Runs of other hosts,
    or of live processes (parallel workers), are left alone. Returns the ids marked."""
    client = MlflowClient()
    host = socket.gethostname()
    reaped = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        if not _pid_alive(int(tags["pid"])):
            retry_locked(client.set_tag, run.info.run_id, "error",
                         f"process {tags['pid']} on {host} died while the run was RUNNING")
            retry_locked(client.set_terminated, run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            reaped.append(run.info.run_id)
    if reaped:
        log.warning("marked %d run(s) left RUNNING by dead processes as KILLED: %s", len(reaped), ", ".join(reaped))
    return reaped


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def environment_tags() -> dict[str, str]:
    """Package versions and the git commit (and whether the tree was dirty), for reproduction."""
    tags = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            tags[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            tags[f"version.{pkg}"] = "not installed"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git.commit"] = commit.stdout.strip()
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return tags


@contextlib.contextmanager
def cell_run(
    experiment_id: str, *, run_name: str, tags: dict[str, str], config: dict[str, Any],
    overrides: list[str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run with the schema's tags, config artifacts and flattened params; end it FINISHED on success,
    FAILED on an error (the message kept in the ``error`` tag) and KILLED on Ctrl-C, never left RUNNING.

    Credentials in ``config`` (a password inside a URI, a ``password``/``token`` key) are masked before logging."""
    config = redact(config)
    overrides = redact(list(overrides or []))
    owner = {"host": socket.gethostname(), "pid": str(os.getpid())}
    run = retry_locked(mlflow.start_run, experiment_id=experiment_id, run_name=run_name, tags={**environment_tags(), **owner, **tags})
    try:
        retry_locked(mlflow.log_dict, config, "config.yaml")
        retry_locked(mlflow.log_dict, {"overrides": list(overrides or [])}, "overrides.yaml")
        params = {k: str(v)[:500] for k, v in flatten(config).items() if not k.startswith("hydra.")}
        retry_locked(mlflow.log_params, params)
        yield run
    except KeyboardInterrupt:
        retry_locked(mlflow.set_tag, "error", "interrupted (KeyboardInterrupt)")
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            retry_locked(mlflow.set_tag, "error", redact_text(f"{type(err).__name__}: {err}")[:5000])
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.FINISHED))
