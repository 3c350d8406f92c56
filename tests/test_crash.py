"""Crash safety: a sweep killed with SIGKILL part-way, then run again, runs only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from conftest import TINY

BIN = Path(sys.executable).parent
MODELS = "model=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def _statuses(root):
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    if mlflow.get_experiment_by_name("default/score") is None:
        return None
    return mlflow.search_runs(experiment_names=["default/score"])


def test_sigkill_mid_sweep_then_rerun_runs_only_missing_cells(tmp_path, shared_data_dir):
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "medxfer-score"), "-m", MODELS, "dataset=synthetic_derm", f"paths.data_dir={shared_data_dir}",
           f"hydra.sweep.dir={tmp_path}/sweep", *TINY]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed_running = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            runs = _statuses(tmp_path)
            if runs is not None and len(runs):
                finished = (runs["status"] == "FINISHED").sum()
                running = runs[runs["status"] == "RUNNING"]
                if finished >= 2 and len(running):
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_running = set(running["run_id"])
                    break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_running, "the sweep finished before it could be killed mid-run"
    before = _statuses(tmp_path)
    assert (before["status"] == "FINISHED").sum() < 6

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _statuses(tmp_path)
    finished = after[after["status"] == "FINISHED"]
    assert len(finished) == 6
    assert not finished.duplicated(["tags.model", "tags.split"]).any()  # no cell twice
    assert set(after.loc[after["run_id"].isin(killed_running), "status"]) == {"KILLED"}
    assert "RUNNING" not in set(after["status"])
    # cells finished before the kill were not run again
    kept = set(before.loc[before["status"] == "FINISHED", "run_id"])
    assert kept <= set(finished["run_id"])
