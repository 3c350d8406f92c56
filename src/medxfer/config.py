"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE_CONF = Path(__file__).resolve().parent / "conf"


def config_dir() -> str:
    """The configs shipped inside the package (``medxfer/conf``), in a wheel as in an editable checkout. A user's
    own folder goes on top with Hydra's ``--config-dir <folder>`` (its files win over the shipped ones)."""
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
