"""Where the Hydra configs live and the OmegaConf resolvers they use. Composing them is the entry points' job
(:mod:`medxfer.cli`, :mod:`medxfer.workflows.grid`)."""

from __future__ import annotations

import os
from pathlib import Path
from omegaconf import OmegaConf

_HERE = Path(__file__).resolve().parent
# an installed wheel carries the configs inside the package (medxfer/conf); a checkout (editable install, or
# PYTHONPATH=src) keeps them in its top-level conf/, two folders above this file
_CONF_CANDIDATES = (_HERE / "conf", _HERE.parent.parent / "conf")


def config_dir() -> str:
    """The folder of medxfer's shipped configs: ``medxfer/conf`` inside a wheel, the checkout's ``conf/`` in an
    editable install (the same files: setup.py maps that folder to the package ``medxfer.conf``). A user's own
    folder adds to them with Hydra's ``--config-dir <folder>`` (e.g. ``<folder>/model/mine.yaml`` makes
    ``model=mine``); Hydra searches it after the shipped folder, so a file named like a shipped one is not used:
    give it a new name."""
    for folder in _CONF_CANDIDATES:
        if (folder / "study.yaml").is_file():
            return str(folder)
    raise FileNotFoundError(f"medxfer's config folder is missing (looked in {', '.join(map(str, _CONF_CANDIDATES))}); "
                            "reinstall medxfer")


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
