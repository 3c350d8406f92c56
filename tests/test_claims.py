"""A cell is claimed while it runs: two processes on the same cells give one FINISHED run per cell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from medxfer.tracking import CellClaimed, cell_run, ensure_experiment, setup_tracking
from medxfer.tracking.store import _claim
from servers import PG_DATABASE, PG_PASSWORD, PG_USER, postgres_bin, start_postgres

SCRIPT = Path(sys.executable).with_name("medxfer-score")
TINY = ["dataset.synthetic.n_per_class=12", "dataset.synthetic.image_size=48", "dataset.ood.synthetic.n_per_class=6",
        "dataset.ood.synthetic.image_size=48", "preprocess.input_size=64", "score=logme"]


def test_the_earliest_running_run_owns_the_cell_and_a_finished_one_ends_it(project):
    setup_tracking(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = ensure_experiment("claims/score", None)
    client = MlflowClient()
    first = client.create_run(exp, tags={"cell": "c1", "host": "elsewhere", "pid": "1"})
    second = client.create_run(exp, tags={"cell": "c1"})
    assert _claim(exp, first, "c1", finished_counts=True) is None
    assert "is running it" in _claim(exp, second, "c1", finished_counts=True)
    client.set_terminated(first.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    assert "has just finished it" in _claim(exp, second, "c1", finished_counts=True)
    assert _claim(exp, second, "c1", finished_counts=False) is None  # force=true runs again
    # through cell_run: the loser's run is deleted before any work, and says who has the cell
    client.create_run(exp, tags={"cell": "c2", "host": "elsewhere", "pid": "1"})
    with pytest.raises(CellClaimed, match="host elsewhere, pid 1"):
        with cell_run(exp, run_name="x", tags={"cell": "c2"}, config={}, claim=True):
            raise AssertionError("the cell was run twice")
    live = client.search_runs([exp], filter_string="tags.cell = 'c2'")
    assert len(live) == 1


def _race(project: Path, shared_data_dir: Path, extra: list[str], env: dict[str, str] | None = None) -> list[str]:
    cmd = [str(SCRIPT), "-m", "model=efficientnet_lite0,efficientnet_lite1", "dataset=synthetic_derm",
           f"paths.data_dir={shared_data_dir}", f"hydra.sweep.dir={project}/multirun", *TINY, *extra]
    env = {**os.environ, "MEDXFER_ROOT": str(project), "HF_HUB_OFFLINE": "1", **(env or {})}
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _check_one_finished_per_cell(uri: str, outputs: list[str]) -> None:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["default/score"])
    assert len(runs) == 4, runs[["tags.mlflow.runName", "status"]]  # 2 models x (train, ood); the losers' are deleted
    assert set(runs["status"]) == {"FINISHED"} and runs["tags.cell"].is_unique
    both = "\n".join(outputs)
    assert both.count(": starting (") == 4, both[-4000:]  # each cell's work was done once, by one process


def test_two_processes_on_the_same_cells_on_sqlite(project, shared_data_dir):
    outputs = _race(project, shared_data_dir, [])
    _check_one_finished_per_cell(f"sqlite:///{project}/mlruns/mlflow.db", outputs)


@pytest.mark.slow
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL server binaries missing: apt-get install postgresql")
def test_two_processes_on_the_same_cells_on_postgresql(project, shared_data_dir):
    pg = start_postgres(project / "postgres")
    try:
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": PG_USER, "PGDATABASE": PG_DATABASE,
               "PGPASSWORD": PG_PASSWORD}
        outputs = _race(project, shared_data_dir, ["tracking=postgres"], env=env)
        os.environ["PGPASSWORD"] = PG_PASSWORD
        try:
            _check_one_finished_per_cell(pg.uri, outputs)
        finally:
            del os.environ["PGPASSWORD"]
    finally:
        pg.stop()
