"""Sweeps through real Hydra launchers and real tracking back ends, all on 127.0.0.1.

- joblib, 2 processes, on the default SQLite store: 24 score cells, none lost, none failed.
- submitit_local against an ``mlflow server`` backed by PostgreSQL: every cell FINISHED exactly once, with the
  values the same cells get on SQLite; then ``tracking=postgres`` straight to the database, whose password
  (from PGPASSWORD) appears in nothing MLflow stored.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from servers import PG_DATABASE, PG_PASSWORD, PG_USER, postgres_bin, start_mlflow_server, start_postgres

BIN = Path(sys.executable).parent
MODELS = "efficientnet_lite0,efficientnet_lite1"


def _sweep(args: list[str], root: Path, data_dir: Path, env: dict[str, str] | None = None, sweep: str = "sweep"):
    full_env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1", **(env or {})}
    if "MLFLOW_TRACKING_URI" not in (env or {}):
        full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [str(BIN / "medxfer-score"), "-m", *args, f"paths.data_dir={data_dir}", f"hydra.sweep.dir={root}/{sweep}", *TINY],
        cwd=root, env=full_env, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def _score_runs(uri: str, experiment: str = "default/score") -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def _values(runs: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """(model, dataset, split, cell) -> every score/* metric of the run."""
    cols = [c for c in runs.columns if c.startswith("metrics.score/")]
    return {
        (r["tags.model"], r["tags.dataset"], r["tags.split"], r["tags.cell"]): {c: r[c] for c in cols if pd.notna(r[c])}
        for _, r in runs.iterrows()
    }


def test_joblib_two_processes_on_sqlite_lose_no_run(tmp_path, shared_data_dir):
    output = _sweep(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                     "model=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                     "dataset=synthetic_derm,synthetic_histo", "score=hscore,nce"], tmp_path, shared_data_dir)
    assert "Joblib.Parallel(n_jobs=2" in output.replace(" ", "")
    runs = _score_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(runs) == 24 and set(runs["status"]) == {"FINISHED"}  # 3 models x 2 datasets x 2 scores x 2 splits
    assert runs["tags.cell"].is_unique
    assert set(zip(runs["tags.model"], runs["tags.dataset"], runs["tags.split"])) == {
        (m, d, s) for m in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
        for d in ("synthetic_derm", "synthetic_histo") for s in ("train", "ood")}
    assert runs["metrics.score/hscore"].notna().sum() == 12 and runs["metrics.score/nce"].notna().sum() == 12
    assert "database is locked" not in output


needs_postgres = pytest.mark.skipif(postgres_bin() is None,
                                    reason="PostgreSQL server binaries missing: apt-get install postgresql")


@pytest.fixture(scope="module")
def postgres_and_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("servers")
    pg = start_postgres(root / "postgres")
    server = None
    try:
        server = start_mlflow_server(pg.uri, root / "artifacts", root / "mlflow-server.log",
                                     env={**os.environ, "PGPASSWORD": PG_PASSWORD})
        yield pg, server, root
    finally:
        if server is not None:
            server.stop()
        pg.stop()


@needs_postgres
def test_submitit_sweep_through_an_mlflow_server_on_postgres_matches_sqlite(tmp_path, shared_data_dir, postgres_and_server):
    pg, server, root = postgres_and_server
    cells = [f"model={MODELS}", "dataset=synthetic_derm,synthetic_mri", "score=paper"]
    output = _sweep(["hydra/launcher=submitit_local", "tracking=server", f"tracking.uri={server.uri}", *cells],
                    tmp_path, shared_data_dir, sweep="sweep-server")
    assert "Submitit 'local' sweep" in output
    on_server = _score_runs(server.uri)
    assert len(on_server) == 8 and set(on_server["status"]) == {"FINISHED"} and on_server["tags.cell"].is_unique
    assert all(uri.startswith("mlflow-artifacts:") for uri in on_server["artifact_uri"])  # uploaded via the server
    # the same cells on the default SQLite store (the feature cache is shared, so no second forward pass)
    _sweep(cells, tmp_path, shared_data_dir, sweep="sweep-sqlite")
    on_sqlite = _score_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(on_sqlite) == 8 and set(on_sqlite["status"]) == {"FINISHED"}
    server_values, sqlite_values = _values(on_server), _values(on_sqlite)
    assert server_values.keys() == sqlite_values.keys()  # same cells, same cell ids
    assert server_values == sqlite_values
    assert all(len(v) == 7 for v in server_values.values())
    # a second sweep against the server finds every cell done
    again = _sweep(["tracking=server", f"tracking.uri={server.uri}", *cells], tmp_path, shared_data_dir, sweep="again")
    assert again.count("2 of 2 split(s) done, 0 to do") == 4 and len(_score_runs(server.uri)) == 8


@needs_postgres
def test_tracking_postgres_takes_the_password_from_the_environment_and_logs_none(tmp_path, shared_data_dir, postgres_and_server):
    pg, server, root = postgres_and_server
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": PG_USER, "PGDATABASE": PG_DATABASE,
           "PGPASSWORD": PG_PASSWORD}
    _sweep(["tracking=postgres", "study=direct", "model=efficientnet_lite0", "dataset=synthetic_derm",
            "score=hscore,logme"], tmp_path, shared_data_dir, env=env)
    os.environ["PGPASSWORD"] = PG_PASSWORD  # this process reads the database too
    try:
        runs = _score_runs(pg.uri, "direct/score")
        assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
        client = MlflowClient()
        stored = []
        for run_id in runs["run_id"]:
            run = client.get_run(run_id)
            stored += [str(run.data.params), str(run.data.tags)]
            assert run.data.params["tracking.uri"] == pg.uri  # the address is logged, without any password
    finally:
        os.environ.pop("PGPASSWORD")
    artifacts = tmp_path / "mlruns" / "artifacts"
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)
    stored += [p.read_text(errors="replace") for p in files]
    assert not any(PG_PASSWORD in text for text in stored)


def test_launcher_presets_compose_with_the_plugins_fields(project, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medxfer.config import config_dir

    monkeypatch.setenv("MEDXFER_SLURM_PARTITION", "gpu")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        slurm = compose("finetune", ["hydra/launcher=slurm", "hydra.launcher.timeout_min=30"], return_hydra_config=True)
        local = compose("score", ["hydra/launcher=local_parallel"], return_hydra_config=True)
    launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["timeout_min"]) == ("gpu", 1, 30)
    assert {"cpus_per_task", "mem_gb", "array_parallelism", "setup"} <= launcher.keys()
    assert launcher["setup"] == [f"source {project}/.venv/bin/activate"]
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 2


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="hydra-ray-launcher not installed (pip install -e '.[ray]'; make does not install it)")
def test_ray_launcher_runs_score_cells_on_a_local_ray(tmp_path, shared_data_dir):
    _sweep(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=null", "hydra.launcher.ray.remote.num_cpus=1",
            f"model={MODELS}", "dataset=synthetic_derm", "score=logme"], tmp_path, shared_data_dir)
    runs = _score_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"} and runs["tags.cell"].is_unique
