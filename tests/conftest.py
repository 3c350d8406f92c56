"""Shared fixtures: a composed Hydra config pointed at a temporary project folder, small enough for a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from medxfer.config import config_dir

# Tiny, fast settings: few synthetic images, 64 px crops, no progress bars.
TINY = [
    "dataset.synthetic.n_per_class=12",
    "dataset.synthetic.image_size=48",
    "dataset.synthetic.progress=false",
    "dataset.ood.synthetic.progress=false",
    "dataset.ood.synthetic.n_per_class=6",
    "dataset.ood.synthetic.image_size=48",
    "preprocess.input_size=64",
    "extract.progress=false",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the network: the hub counts as unavailable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project root (mlruns/, data/, .cache/) for one test; the synthetic data folder is shared."""
    monkeypatch.setenv("MEDXFER_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def zoo_cache() -> str:
    """The cache that holds fetched and converted zoo weights, shared across tests and runs (downloads are
    large): ``MEDXFER_CACHE_DIR``, else the checkout's ``.cache/medxfer``."""
    return os.environ.get("MEDXFER_CACHE_DIR") or str(Path(__file__).resolve().parents[1] / ".cache" / "medxfer")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """Synthetic images generated once per test session and reused (generation is deterministic)."""
    return tmp_path_factory.mktemp("data")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture
def score_cfg(project, shared_data_dir):
    """A factory: the score config with TINY settings plus ``overrides``."""

    def make(*overrides: str) -> DictConfig:
        return compose_config("score", [f"paths.data_dir={shared_data_dir}", *TINY, *overrides])

    return make


def log_fake_study(root: Path, study: str = "default", models=("m1", "m2", "m3", "m4"), datasets=("d1", "d2"),
                   seed: int = 0, skip: tuple = ()) -> dict:
    """Log a small study straight into MLflow, following the run schema (score runs, two fine-tune trials per
    cell): analysis and notebook tests query it like a real one. Returns the numbers logged."""
    import mlflow
    import numpy as np

    from medxfer.tracking import ensure_experiment, setup_tracking

    rng = np.random.default_rng(seed)
    setup_tracking(f"sqlite:///{root}/mlruns/mlflow.db")
    artifacts = str(root / "mlruns" / "artifacts")
    score_exp = ensure_experiment(f"{study}/score", artifacts)
    ft_exp = ensure_experiment(f"{study}/finetune", artifacts)
    truth = {}
    for d in datasets:
        for m in models:
            if (m, d) in skip:
                continue
            tags = {"model": m, "dataset": d, "study": study}
            with mlflow.start_run(experiment_id=score_exp, tags={**tags, "stage": "score", "split": "iid"}):
                vals = {"score/alpha": float(rng.normal()), "score/beta": float(rng.normal())}
                mlflow.log_metrics(vals)
            trials = []
            for t in (0, 1):
                with mlflow.start_run(experiment_id=ft_exp, tags={**tags, "stage": "finetune", "split": "iid"}):
                    mlflow.log_param("trial", t)
                    mets = {"best/val_bal_acc": float(rng.uniform(0.5, 1)), "test/bal_acc": float(rng.uniform(0.5, 1)),
                            "ood/bal_acc": float(rng.uniform(0.3, 1)), "ood_score/alpha": float(rng.normal()),
                            "ood_score/beta": float(rng.normal())}
                    mlflow.log_metrics(mets)
                    trials.append(mets)
            truth[(m, d)] = {**vals, "selected": max(trials, key=lambda x: x["best/val_bal_acc"])}
    return truth
