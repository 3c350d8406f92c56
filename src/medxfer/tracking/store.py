"""MLflow setup and the run schema of ARCHITECTURE.md: experiments, cell runs, finished-cell lookups.

Only this module talks to the tracking store directly; the stages call these functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
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

from medxfer.interrupts import as_interrupted, mark_during
from medxfer.tracking.location import check_sqlite_store, check_uri, default_artifact_root, sqlite_path
from medxfer.tracking.opening import first_open_lock
from medxfer.tracking.retry import retry_locked
from medxfer.errors import MedxferError
from medxfer.tracking.secrets import redact, redact_text

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "torchvision", "timm", "lightning", "mlflow", "numpy", "scikit-learn", "medxfer")


class TrackingError(MedxferError, RuntimeError):
    """The tracking store cannot be reached or used."""


#: URIs already checked in this process: a command (a study runs every stage) sets tracking up once.
_READY: set[tuple[str, str]] = set()


def setup_tracking(uri: str, *, create: bool | None = None) -> str:
    """Point MLflow at ``uri`` and check that the store answers, before any work starts.

    A ``sqlite:///`` URI must name a writable location; its folder is created only with ``create=True``, or by
    default when it is the project's ``mlruns/`` folder (see :func:`medxfer.tracking.location.check_sqlite_store`).
    Once a URI answered, later calls in the same process only point MLflow at it again (a SQLite file that has
    gone since is checked anew). Returns the URI.
    """
    key = (uri, os.getcwd())  # a relative SQLite path names another file from another folder
    if key in _READY:
        db_path = sqlite_path(uri) if urlparse(uri).scheme == "sqlite" else None
        if db_path is None or db_path.is_file():
            mlflow.set_tracking_uri(uri)
            return uri
        _READY.discard(key)
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parsed = urlparse(uri)
    check_uri(uri)
    db_path = None
    if parsed.scheme == "sqlite":
        db_path = sqlite_path(uri)
        if db_path is not None:
            check_sqlite_store(db_path, create=create)
    if parsed.scheme in ("http", "https"):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with first_open_lock(uri, db_path):  # MLflow builds a new store's tables on this first open
            MlflowClient(uri).search_experiments(max_results=1)
    except MedxferError:
        raise
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise TrackingError(
            f"cannot reach the MLflow tracking store tracking.uri={redact_text(uri)!r}: "
            f"{type(err).__name__}: {redact_text(str(err))[:300]}"
        ) from None
    _READY.add(key)
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


# MLflow 3's UI opens an experiment by its kind: this one on the runs table as model training (the
# ``workflowType=machine_learning`` view); without it the UI may guess GenAI and open traces or an evaluation view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def ensure_experiment(name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created (with artifacts under ``artifact_root/<name>``) if missing; a
    null ``artifact_root`` puts a SQLite store's artifacts beside it (``<db folder>/artifacts``).

    Safe when several processes race to create it: the loser reads the winner's experiment.
    """
    client = MlflowClient()
    exp = retry_locked(client.get_experiment_by_name, name)
    artifact_root = artifact_root or default_artifact_root(mlflow.get_tracking_uri())
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted in the tracking store; restore it or use another study=")
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # created by an older medxfer; a kind someone set is kept
            retry_locked(client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return exp.experiment_id
    location = None
    if artifact_root:
        location = (Path(artifact_root) / name.replace("/", "-")).resolve().as_uri() if "://" not in artifact_root \
            else f"{artifact_root.rstrip('/')}/{name.replace('/', '-')}"
    try:
        return retry_locked(client.create_experiment, name, artifact_location=location,
                            tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except MlflowException:
        exp = retry_locked(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_id_of(name: str) -> str | None:
    """The id of experiment ``name``, or None when the store has none by that name (nothing is created)."""
    exp = retry_locked(MlflowClient().get_experiment_by_name, name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage != "deleted" else None


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
    for run in retry_locked(client.search_runs, [experiment_id], filter_string="attributes.status = 'RUNNING'",
                            max_results=1000):
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
    """Package versions and the git commit (and whether the tree was dirty), for reproduction; computed once
    per process (a sweep's jobs in one process share them)."""
    return dict(_environment_tags())


@functools.lru_cache(maxsize=1)
def _environment_tags() -> dict[str, str]:
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


class CellClaimed(MedxferError, RuntimeError):
    """Another process runs (or has just finished) the cell: this one leaves it alone."""


def _claim(experiment_id: str, run: Any, cell: str, *, finished_counts: bool) -> str | None:
    """Arbitrate a cell between processes through the store: every contender first creates its RUNNING run, then
    looks. The earliest RUNNING run of the cell (start time, then run id) owns it, and a FINISHED run (unless
    ``finished_counts`` is false: ``force=true``) means the work is done. Returns who has the cell, or None when it
    is ours. A claim of a dead process of this host was already reaped (:func:`reap_dead_runs`)."""
    mine = (run.info.start_time, run.info.run_id)
    rivals = search(experiment_id, f"tags.cell = '{cell}' and attributes.status = 'RUNNING'")
    earlier = sorted((r.info.start_time, r.info.run_id, r) for r in rivals
                     if (r.info.start_time, r.info.run_id) < mine and r.info.run_id != run.info.run_id)
    if earlier:
        other = earlier[0][2]
        return (f"run {other.info.run_id} (host {other.data.tags.get('host', '?')}, pid {other.data.tags.get('pid', '?')}) "
                "is running it")
    if finished_counts:
        done = search(experiment_id, f"tags.cell = '{cell}' and attributes.status = 'FINISHED'", max_results=1)
        if done:
            return f"run {done[0].info.run_id} has just finished it"
    return None


@contextlib.contextmanager
def cell_run(
    experiment_id: str, *, run_name: str, tags: dict[str, str], config: dict[str, Any],
    overrides: list[str] | None = None, claim: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run with the schema's tags, config artifacts and flattened params; end it FINISHED on success,
    FAILED on an error (the message kept in the ``error`` tag) and KILLED on Ctrl-C, never left RUNNING.

    With ``claim`` (and a ``cell`` tag), the run is the cell's claim: when another process holds the cell (an
    earlier RUNNING run of it, or a FINISHED one unless ``config['force']``), the new run is deleted and
    :class:`CellClaimed` is raised before any work. Credentials in ``config`` (a password inside a URI, a
    ``password``/``token`` key) are masked before logging."""
    config = redact(config)
    overrides = redact(list(overrides or []))
    owner = {"host": socket.gethostname(), "pid": str(os.getpid())}
    run = retry_locked(mlflow.start_run, experiment_id=experiment_id, run_name=run_name, tags={**environment_tags(), **owner, **tags})
    if claim and tags.get("cell"):
        holder = _claim(experiment_id, run, tags["cell"], finished_counts=not config.get("force"))
        if holder is not None:
            retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.KILLED))
            retry_locked(MlflowClient().delete_run, run.info.run_id)
            raise CellClaimed(f"{run_name}: {holder}; leaving the cell to it")
    try:
        retry_locked(mlflow.log_dict, config, "config.yaml")
        retry_locked(mlflow.log_dict, {"overrides": list(overrides or [])}, "overrides.yaml")
        params = {k: str(v)[:500] for k, v in flatten(config).items() if not k.startswith("hydra.")}
        retry_locked(mlflow.log_params, params)
        yield run
    except KeyboardInterrupt as err:
        mark_during(err, run_name)
        retry_locked(mlflow.set_tag, "error", f"interrupted ({as_interrupted(err).signal_name})")
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            retry_locked(mlflow.set_tag, "error", redact_text(f"{type(err).__name__}: {err}")[:5000])
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        retry_locked(mlflow.end_run, RunStatus.to_string(RunStatus.FINISHED))


# Writes to the active run. Every stage logs through these (never through mlflow directly), so that retries on
# a locked SQLite store and the run schema live here.

def active_run_id() -> str | None:
    """The id of the run a ``cell_run`` block opened, or None outside one."""
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run (none: nothing is written)."""
    if metrics:
        retry_locked(mlflow.log_metrics, metrics, step=step)


def log_params(params: dict[str, Any]) -> None:
    """Params of the active run."""
    if params:
        retry_locked(mlflow.log_params, params)


def set_tags(tags: dict[str, str]) -> None:
    """Tags of the active run."""
    if tags:
        retry_locked(mlflow.set_tags, tags)


def log_dict(value: dict[str, Any], artifact_file: str) -> None:
    """A JSON or YAML artifact of the active run (by ``artifact_file``'s suffix)."""
    retry_locked(mlflow.log_dict, value, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """A text artifact of the active run."""
    retry_locked(mlflow.log_text, text, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """A file as an artifact of the active run."""
    retry_locked(mlflow.log_artifact, str(path), artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    """A folder's files as artifacts of the active run."""
    retry_locked(mlflow.log_artifacts, str(folder), artifact_path)


def set_run_tag(run_id: str, key: str, value: str) -> None:
    """A tag of a run other than the active one (e.g. marking a trial's checkpoint as pruned)."""
    retry_locked(MlflowClient().set_tag, run_id, key, value)


def logged_model_name(text: str) -> str:
    """``text`` as a LoggedModel name: MLflow refuses ``/ : . % " '`` in one, each becomes ``_``
    (``lite0@derm#trial1.s1`` -> ``lite0@derm#trial1_s1``)."""
    return re.sub(r"[/:.%\"']", "_", text)


def log_checkpoint_model(run_id: str, experiment_id: str, name: str, *, params: dict[str, Any],
                         tags: dict[str, str]) -> str:
    """An MLflow LoggedModel for the checkpoint a FINISHED run produced, so that the UI's Models column and
    model pages point to it; returns its model id.

    The model is external: the checkpoint stays where the run left it (``tags`` name its path and SHA-256), so a
    study does not copy every kept checkpoint into the store. It is the run's output (step 0) and the run's
    ``logged_model_id`` tag. ``name`` is made a valid model name (:func:`logged_model_name`).
    """
    from mlflow.entities import LoggedModelOutput

    client = MlflowClient()
    model = retry_locked(client.create_logged_model, experiment_id, name=logged_model_name(name), source_run_id=run_id,
                         tags=tags, params={k: str(v) for k, v in params.items()}, model_type="medxfer-checkpoint")
    retry_locked(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, 0)])
    retry_locked(client.set_tag, run_id, "logged_model_id", model.model_id)
    return model.model_id


def register_logged_model(run_id: str, model_id: str, name: str) -> str:
    """A new version of the registered model ``name`` (created when missing) from LoggedModel ``model_id``;
    the run's ``registered_model`` tag names it (``<name>/<version>``), which is also returned."""
    client = MlflowClient()
    if not _has_registered_model(name):
        retry_locked(client.create_registered_model, name)
    version = retry_locked(client.create_model_version, name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    label = f"{version.name}/{version.version}"
    retry_locked(client.set_tag, run_id, "registered_model", label)
    return label


def _has_registered_model(name: str) -> bool:
    try:
        retry_locked(MlflowClient().get_registered_model, name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def search(experiment_id: str, filter_string: str, max_results: int = 10_000) -> list[Any]:
    """Runs of an experiment matching ``filter_string`` (MLflow's search syntax), retried when locked."""
    return retry_locked(MlflowClient().search_runs, [experiment_id], filter_string=filter_string,
                        max_results=max_results)


def finished_runs_of(experiment_id: str, cells: list[str]) -> dict[str, Any]:
    """The newest FINISHED run of each cell id in ``cells``: ``{cell: run}``. MLflow's search has no ``IN`` for
    tags: a few cells are asked for one by one, many by reading the experiment's FINISHED runs once."""
    wanted = set(cells)
    if len(wanted) <= 8:
        runs = [r for cell in sorted(wanted)
                for r in search(experiment_id, f"tags.cell = '{cell}' and attributes.status = 'FINISHED'")]
    else:
        runs = search_all(experiment_id, "attributes.status = 'FINISHED'")
    found: dict[str, Any] = {}
    for run in runs:
        cell = run.data.tags.get("cell")
        if cell in wanted and (cell not in found or run.info.start_time > found[cell].info.start_time):
            found[cell] = run
    return found


def search_all(experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of an experiment matching ``filter_string``, page by page."""
    client, runs, token = MlflowClient(), [], None
    while True:
        page = retry_locked(client.search_runs, [experiment_id], filter_string=filter_string, max_results=10_000,
                            page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def has_finished_run(experiment: str) -> bool:
    """Whether the experiment named ``experiment`` exists and holds a FINISHED run (one row read, not all)."""
    exp = retry_locked(MlflowClient().get_experiment_by_name, experiment)
    return exp is not None and bool(retry_locked(MlflowClient().search_runs, [exp.experiment_id],
                                                 filter_string="attributes.status = 'FINISHED'", max_results=1))


def finished_frame(experiment: str) -> "Any":
    """Every FINISHED run of the experiment named ``experiment`` as a DataFrame (``run_id``, ``start_time``,
    ``tags.*``, ``params.*``, ``metrics.*``; newest first), empty when the experiment does not exist."""
    import pandas as pd

    exp = retry_locked(MlflowClient().get_experiment_by_name, experiment)
    if exp is None:
        return pd.DataFrame()
    return retry_locked(mlflow.search_runs, experiment_ids=[exp.experiment_id],
                        filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])


def download_artifact(run_id: str, path: str, dest: str | Path) -> str:
    """Download the artifact ``path`` of run ``run_id`` into ``dest``; returns the local path.

    Without MLflow's progress bar: medxfer reads small files (tables, configs, predictions), and the bar would
    only add carriage returns to a log."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        return retry_locked(MlflowClient().download_artifacts, run_id, path, str(dest))
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    """The artifact paths of run ``run_id`` under ``path`` (one level)."""
    return [a.path for a in retry_locked(MlflowClient().list_artifacts, run_id, path)]


def get_run(run_id: str) -> Any:
    """The run ``run_id`` (its info and data), or None when the store has no such run."""
    try:
        return retry_locked(MlflowClient().get_run, run_id)
    except MlflowException:
        return None


def log_input(name: str, digest: str, location: str, n_samples: int, class_counts: dict[str, int],
              context: str) -> None:
    """Record a split the active run read as an MLflow dataset input (the UI's Dataset column and dataset pages):
    its name, content digest, where it was read from, its size and classes. Only metadata is logged."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    class _SplitDataset(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            config = super().to_dict()
            config["profile"] = json.dumps({"num_rows": n_samples, "classes": class_counts})
            return config

        @property
        def profile(self) -> dict[str, Any]:
            return {"num_rows": n_samples, "classes": class_counts}

    dataset = _SplitDataset(LocalArtifactDatasetSource(location), name=name, digest=digest[:16])
    for attempt in range(3):
        try:
            retry_locked(mlflow.log_input, dataset, context=context)
            return
        except MlflowException as err:
            # two processes logging the same split at once: the store's unique (experiment, name, digest) index
            # refuses the second insert; the dataset now exists, and logging again links the run to it
            duplicate = "UNIQUE constraint failed" in str(err) or "duplicate key" in str(err)
            if not duplicate or attempt == 2:
                raise


def current_uri() -> str:
    """The tracking URI MLflow points at (credentials masked), for messages."""
    return redact_text(mlflow.get_tracking_uri())
