"""The real console scripts, as a user runs them (subprocesses, Hydra multirun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import TINY

BIN = Path(sys.executable).parent


def _run(args, root, data_dir, timeout=600):
    env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [str(BIN / args[0]), *args[1:], f"paths.data_dir={data_dir}", f"hydra.sweep.dir={root}/sweep", *TINY],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_score_multirun_three_models_logs_six_runs_and_rerun_adds_none(tmp_path, shared_data_dir):
    cmd = ["medxfer-score", "-m", "model=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2", "dataset=synthetic_derm"]
    _run(cmd, tmp_path, shared_data_dir)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/score"])
    assert len(runs) == 6 and set(runs["status"]) == {"FINISHED"}
    assert set(zip(runs["tags.model"], runs["tags.split"])) == {
        (m, s) for m in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2") for s in ("train", "ood")
    }
    score_cols = [c for c in runs.columns if c.startswith("metrics.score/")]
    assert len(score_cols) >= 7 and runs[score_cols].notna().all().all()
    second = _run(cmd, tmp_path, shared_data_dir)
    assert second.stdout.count("2 of 2 split(s) done, 0 to do") == 3
    assert "Predicting" not in second.stderr + second.stdout  # no forward pass
    assert len(mlflow.search_runs(experiment_names=["default/score"])) == 6


def test_unknown_override_key_is_refused(tmp_path, shared_data_dir):
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path)}
    proc = subprocess.run([str(BIN / "medxfer-score"), "no_such_key=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # refused before any work


@pytest.mark.parametrize("module", ["score", "finetune", "analyze", "study", "reproduce", "rank", "zoo", "data"])
def test_console_scripts_exist(module):
    assert (BIN / f"medxfer-{module}").exists()
