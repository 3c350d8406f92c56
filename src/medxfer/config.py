"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_PACKAGE_CONF = Path(__file__).resolve().parent / "conf"


def config_dir() -> str:
    """The configs shipped inside the package (``medxfer/conf``), in a wheel as in an editable checkout. A user's
    own folder adds to them with Hydra's ``--config-dir <folder>`` (e.g. ``<folder>/model/mine.yaml`` makes
    ``model=mine``); Hydra searches it after the shipped folder, so a file named like a shipped one is not used:
    give it a new name."""
    if not _PACKAGE_CONF.is_dir():
        raise FileNotFoundError(f"medxfer's config folder {_PACKAGE_CONF} is missing; reinstall medxfer")
    return str(_PACKAGE_CONF)


def project_root() -> str:
    """The folder that holds ``mlruns/``, ``data/`` and ``outputs/``: $MEDXFER_ROOT, else the working directory."""
    return os.path.abspath(os.environ.get("MEDXFER_ROOT") or os.getcwd())


def reference_dir(name: str = "") -> str:
    """A folder of reference data shipped inside the package (``src/medxfer/reference/<name>``), e.g. the paper's
    published splits: ``${medxfer_reference:chaves2023/splits/isic19}`` in a config."""
    path = Path(__file__).resolve().parent / "reference" / name
    if not path.exists():
        raise FileNotFoundError(f"medxfer's reference data {path} is missing; reinstall medxfer (`pip install -e .`)")
    return str(path)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("medxfer_root"):
        OmegaConf.register_new_resolver("medxfer_root", project_root)
    if not OmegaConf.has_resolver("medxfer_reference"):
        OmegaConf.register_new_resolver("medxfer_reference", reference_dir)


register_resolvers()


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config ``config_name`` with ``overrides``, as Hydra's command line would build it (inside a
    running Hydra job, with that job's config search path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
