"""Tracking stores are not created by accident, and a SQLite store's artifacts go beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from medxfer.tracking import ensure_experiment, setup_tracking
from medxfer.tracking.location import StoreLocationError, default_artifact_root
from medxfer.tracking.opening import StoreOpeningError, sqlite_lock
from servers import PG_PASSWORD, postgres_bin, start_postgres


def test_a_mistyped_sqlite_path_is_an_error_naming_the_folder(tmp_path):
    folder = tmp_path / "no" / "such" / "dir"
    with pytest.raises(StoreLocationError) as err:
        setup_tracking(f"sqlite:///{folder}/mlflow.db")
    assert f"the folder {folder} of the tracking store mlflow.db does not exist" in str(err.value)
    assert "tracking.create=true" in err.value.hint
    assert not folder.exists() and not (tmp_path / "no").exists()


def test_create_true_makes_a_new_store_whose_artifacts_go_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's own default would be ./mlruns here
    folder = tmp_path / "elsewhere" / "store"
    uri = f"sqlite:///{folder}/mlflow.db"
    setup_tracking(uri, create=True)
    exp = mlflow.get_experiment(ensure_experiment("s/score", None))
    assert exp.artifact_location == (folder / "artifacts" / "s-score").as_uri()
    assert not (tmp_path / "mlruns").exists()
    assert default_artifact_root(uri) == str(folder / "artifacts")


def test_the_default_project_store_is_still_created_on_first_use(tmp_path):
    setup_tracking(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_create_false_refuses_even_the_default_folder(tmp_path):
    with pytest.raises(StoreLocationError, match="does not exist"):
        setup_tracking(f"sqlite:///{tmp_path}/mlruns/mlflow.db", create=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system holding a SQLite store (needs root to mount a tmpfs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    src = tmp_path / "src"
    setup_tracking(f"sqlite:///{src}/mlflow.db", create=True)
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "mlruns").mkdir()
        (mount / "mlruns" / "mlflow.db").write_bytes((src / "mlflow.db").read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_store_on_a_read_only_file_system_fails_at_once_naming_it(read_only_dir):
    import time

    t0 = time.perf_counter()
    with pytest.raises(StoreLocationError) as err:
        setup_tracking(f"sqlite:///{read_only_dir}/mlruns/mlflow.db")
    assert time.perf_counter() - t0 < 5
    assert f"{read_only_dir}/mlruns is not writable: read-only file system" in str(err.value)


def test_a_uri_that_is_not_one_is_an_error():
    with pytest.raises(StoreLocationError, match="tracking.uri='not-a-uri' is not a tracking URI"):
        setup_tracking("not-a-uri")


_OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from medxfer.tracking import setup_tracking
folder, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
uri = sys.argv[4] if len(sys.argv) > 4 else f"sqlite:///{folder}/mlruns/mlflow.db"
(folder / f"ready-{me}").touch()
while len(list(folder.glob("ready-*"))) < n:  # every process has imported MLflow: open the store together
    time.sleep(0.005)
setup_tracking(uri)
"""


def test_processes_opening_a_new_store_together_all_get_it(tmp_path):
    # MLflow builds a new SQLite store's tables on first open; unserialised, two builds break each other
    # (without the lock, 3 processes failed in each of 3 tries here)
    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, str(tmp_path), str(i), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(outputs)[-3000:]
    setup_tracking(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert mlflow.get_experiment(ensure_experiment("s/score", None)).name == "s/score"


def test_a_store_whose_tables_another_process_keeps_building_is_a_named_error(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite_lock(db):
        with pytest.raises(StoreOpeningError, match=r"another process has held .*\.mlflow\.db\.init-lock"):
            with sqlite_lock(db, timeout=0.3):
                raise AssertionError("two holders of the lock")
    with sqlite_lock(db, timeout=0.3):  # released
        pass


@pytest.mark.slow
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL server binaries missing: apt-get install postgresql")
def test_processes_opening_a_new_postgres_store_together_all_get_it(tmp_path):
    pg = start_postgres(tmp_path / "postgres")
    try:
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        n = 3
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, str(tmp_path), str(i), str(n), pg.uri],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(n)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * n, "\n".join(outputs)[-3000:]
    finally:
        pg.stop()


def test_experiments_are_tagged_as_model_training_so_the_ui_opens_their_runs(tmp_path):
    """MLflow 3's UI opens an experiment by its ``mlflow.experimentKind`` tag: medxfer's are model training, also
    when an older medxfer created them untagged; a kind someone chose is kept."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    setup_tracking(uri, create=True)
    client = mlflow.MlflowClient()
    new = client.get_experiment(ensure_experiment("s/score", None))
    assert new.tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("s/finetune")  # as a medxfer before the tag made it
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert ensure_experiment("s/finetune", None) == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = client.create_experiment("s/analysis", tags={"mlflow.experimentKind": "genai_development"})
    ensure_experiment("s/analysis", None)
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"
