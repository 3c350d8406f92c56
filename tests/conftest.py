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
