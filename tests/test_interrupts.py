"""SIGINT and SIGTERM during extraction and during fine-tuning: the run is KILLED, one line says what was
interrupted, the exit status is 130 / 143, and the same command run again completes."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY

BIN = Path(sys.executable).parent


def _runs(root: Path, experiment: str):
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=100)


def _running_metrics(root: Path) -> list[set[str]]:
    """The metric keys of each RUNNING run, read from the SQLite file read-only: an MLflow client here would run
    the store's migrations concurrently with the command creating it ("table _alembic_tmp_... already exists")."""
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            runs = [r for (r,) in con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")]
            return [{k for (k,) in con.execute("SELECT key FROM metrics WHERE run_uuid = ?", (r,))} for r in runs]
    except sqlite3.Error:  # the tables are not created yet
        return []


def _interrupt_when(proc, root: Path, ready, signum: int, timeout: float = 400) -> None:
    """Send ``signum`` to ``proc`` once one of its runs is RUNNING and ``ready(metric keys of the run)`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        running = _running_metrics(root)
        if running and ready(running[0]):
            os.kill(proc.pid, signum)
            return
        time.sleep(0.2)
    ended = f"it ended with status {proc.returncode}: {proc.stderr.read()[-3000:]}" if proc.poll() is not None else ""
    raise AssertionError(f"the command ended (or took too long) before it could be interrupted while RUNNING; {ended}")


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _check_interrupted(proc, signum: int, root: Path, experiment: str, script: str) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted by" in line]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"{script}: interrupted by {signal.Signals(signum).name} during run ")
    assert "(marked KILLED)" in lines[0] and "run the same command again to resume" in lines[0]
    assert "Traceback" not in err
    statuses = {r.info.status for r in _runs(root, experiment)}
    assert statuses == {"KILLED"}, statuses
    (killed,) = _runs(root, experiment)
    assert killed.data.tags["error"] == f"interrupted ({signal.Signals(signum).name})"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_during_extraction(signum, tmp_path, shared_data_dir):
    # enough images that extraction takes seconds: the signal lands inside Lightning's predict loop (at 96 px the
    # whole cell, LogME included, took 1.4 s on a 2-core CPU machine, and the signal could arrive after it)
    cmd = [str(BIN / "medxfer-score"), f"paths.data_dir={tmp_path}/data", "splits=[train]",
           "dataset.synthetic.n_per_class=200", "dataset.synthetic.image_size=224", "dataset.synthetic.progress=false",
           "dataset.split.val=0.15", "dataset.split.test=0.15",  # ~280 training images: seconds of extraction
           "dataset.ood.synthetic.progress=false", "preprocess.input_size=224", "extract.progress=false",
           "extract.batch_size=4", "extract.num_workers=0", "score.names=[logme]", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        # labels.json is logged right before extraction starts
        _interrupt_when(proc, tmp_path, lambda metrics: time.sleep(1.5) is None, signum)
        _check_interrupted(proc, signum, tmp_path, "default/score", "medxfer-score")
    finally:
        if proc.poll() is None:
            proc.kill()
    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(r.info.status for r in _runs(tmp_path, "default/score")) == ["FINISHED", "KILLED"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_during_fine_tuning(signum, tmp_path, shared_data_dir):
    cmd = [str(BIN / "medxfer-finetune"), f"paths.data_dir={shared_data_dir}", *TINY[:6], "finetune=smoke",
           "finetune.max_epochs=6", "finetune.progress=false", "ood_scores=[]", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        # an epoch's metrics are logged: the fit loop is running
        _interrupt_when(proc, tmp_path, lambda metrics: "train/loss" in metrics, signum)
        _check_interrupted(proc, signum, tmp_path, "default/finetune", "medxfer-finetune")
    finally:
        if proc.poll() is None:
            proc.kill()
    rerun = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(r.info.status for r in _runs(tmp_path, "default/finetune")) == ["FINISHED", "KILLED"]
