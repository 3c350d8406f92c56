"""Compose a stage's config from inside another task (the study) or from plain Python."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from medxfer.config import config_dir


def compose_stage(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config ``config_name`` with ``overrides``, as Hydra's command line would build it."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
