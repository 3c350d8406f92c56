"""Hydra callbacks that prepare the tracking store once, before any job of a run or multirun starts.

Creating the SQLite database and the experiment up front means parallel jobs (joblib, submitit) never race to
create them, which is where SQLite writers lose runs.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import medxfer.config  # noqa: F401 - registers the resolvers used by the configs
from medxfer.tracking.store import ensure_experiment, setup_tracking

log = logging.getLogger(__name__)


class PrepareTracking(Callback):
    """Check the tracking URI answers and create the stage's experiment before jobs start."""

    def _prepare(self, config: DictConfig) -> None:
        if config.get("reference"):  # medxfer-analyze reference=...: a published table, no tracking store
            return
        tracking = OmegaConf.to_container(config.tracking, resolve=True)
        setup_tracking(tracking["uri"])
        ensure_experiment(tracking["experiment"], tracking.get("artifact_root"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)
