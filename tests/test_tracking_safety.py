"""Tracking under parallel writers and with credentials around: lock retries, masking, atomic checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytest
import sqlalchemy.exc
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medxfer.tracking import cell_run, ensure_experiment, setup_tracking
from medxfer.tracking.retry import TrackingLocked, is_lock_error, retry_locked
from medxfer.tracking.secrets import redact, redact_text
from medxfer.training.checkpoints import AtomicCheckpointIO


class Flaky:
    """Fails like MLflow's SQLite store under contention ``failures`` times, then answers."""

    def __init__(self, failures: int, error: Exception | None = None):
        self.failures, self.calls = failures, 0
        self.error = error

    def __call__(self, value, *, key):
        self.calls += 1
        if self.calls <= self.failures:
            if self.error is not None:
                raise self.error
            # what MLflow raises: its exception wrapping SQLAlchemy's OperationalError
            try:
                raise sqlalchemy.exc.OperationalError("INSERT INTO metrics", {}, sqlite3.OperationalError("database is locked"))
            except sqlalchemy.exc.OperationalError as inner:
                raise MlflowException(str(inner)) from inner
        return (value, key)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr("medxfer.tracking.retry.FIRST_DELAY_S", 0.001)
    monkeypatch.setattr("medxfer.tracking.retry.MAX_DELAY_S", 0.002)


def test_locked_writes_are_retried_until_they_go_through(fast_retries):
    flaky = Flaky(failures=5)
    assert retry_locked(flaky, 3, key="a") == (3, "a")
    assert flaky.calls == 6


def test_other_errors_are_not_retried(fast_retries):
    flaky = Flaky(failures=5, error=MlflowException("RESOURCE_DOES_NOT_EXIST: run 123"))
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        retry_locked(flaky, 1, key="a")
    assert flaky.calls == 1


def test_a_store_locked_for_good_gives_a_clear_error(fast_retries, monkeypatch):
    monkeypatch.setenv("MEDXFER_TRACKING_RETRIES", "3")
    flaky = Flaky(failures=100)
    with pytest.raises(TrackingLocked, match=r"still locked after 3 tries of Flaky.*tracking=server"):
        retry_locked(flaky, 1, key="a")
    assert flaky.calls == 3
    monkeypatch.setenv("MEDXFER_TRACKING_RETRIES", "many")
    with pytest.raises(ValueError, match="MEDXFER_TRACKING_RETRIES must be a whole number of tries, got 'many'"):
        retry_locked(flaky, 1, key="a")


def test_lock_errors_are_recognised_through_their_causes():
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise MlflowException("(sqlite3.OperationalError) see cause") from inner
    except MlflowException as outer:
        assert is_lock_error(outer)
    assert not is_lock_error(MlflowException("no such table: runs"))


def test_a_real_sqlite_lock_held_past_the_busy_timeout_is_waited_out(tmp_path, fast_retries, monkeypatch):
    """An exclusive lock held by another connection: the write fails with "database is locked" until the lock goes."""
    db = tmp_path / "store.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    attempts = []

    def write():
        attempts.append(1)
        if len(attempts) == 3:
            holder.execute("COMMIT")  # the other writer finishes while we back off
        with sqlite3.connect(db, timeout=0.01) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        return "written"

    assert retry_locked(write) == "written" and len(attempts) == 3
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone() == (1,)


@pytest.mark.parametrize("text, expected", [
    ("postgresql://mlflow:s3cr3t@db.example.org:5432/mlflow", "postgresql://mlflow:***@db.example.org:5432/mlflow"),
    ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
    ("http://user:tok@host:5000", "http://user:***@host:5000"),
    ("postgresql://h/db?user=u&password=pw&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("sqlite:////work/mlruns/mlflow.db", "sqlite:////work/mlruns/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("a time like 12:30@noon stays", "a time like 12:30@noon stays"),
])
def test_passwords_in_uris_are_masked(text, expected):
    assert redact_text(text) == expected


def test_secret_keys_are_masked_anywhere_in_a_config():
    config = {"tracking": {"uri": "postgresql://u:pw@h/db", "password": "pw", "token": None},
              "aws_secret_access_key": "k", "list": ["https://a:b@c"], "lr": 0.1}
    assert redact(config) == {"tracking": {"uri": "postgresql://u:***@h/db", "password": "***", "token": None},
                              "aws_secret_access_key": "***", "list": ["https://a:***@c"], "lr": 0.1}


def test_a_run_never_logs_a_password_written_into_its_config(tmp_path):
    setup_tracking(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = ensure_experiment("s/score", str(tmp_path / "art"))
    config = {"tracking": {"uri": "postgresql://mlflow:hunter2@db:5432/mlflow"}, "model": {"name": "m"}}
    with pytest.raises(RuntimeError):
        with cell_run(exp, run_name="r", tags={"stage": "score"}, config=config,
                      overrides=["tracking.uri=postgresql://mlflow:hunter2@db:5432/mlflow"]):
            raise RuntimeError("could not connect to postgresql://mlflow:hunter2@db:5432/mlflow")
    run = mlflow.search_runs([exp], output_format="list")[0]
    client = MlflowClient()
    logged = [str(run.data.params), str(run.data.tags)]
    for name in ("config.yaml", "overrides.yaml"):
        logged.append(Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_text())
    assert run.info.status == "FAILED" and "mlflow:***@db" in run.data.tags["error"]
    assert "mlflow:***@db" in run.data.params["tracking.uri"]
    assert not any("hunter2" in text for text in logged)


def test_checkpoints_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1
    before = target.read_bytes()

    def dies_halfway(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2}, target)
    assert target.read_bytes() == before  # the reader still sees the last complete checkpoint
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
