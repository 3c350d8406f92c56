"""Where the Hydra configs live, the OmegaConf resolvers they use, and composing them from code."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

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


_remembered: dict[tuple[str, tuple[str, ...]], DictConfig] | None = None


@contextlib.contextmanager
def remembered_compositions() -> Iterator[None]:
    """Inside the block, :func:`compose_config` composes each (config name, overrides) once and hands out
    copies: a study composes every stage config for its stages and the same ones again for its manifest, and one
    Hydra composition takes about a quarter of a second. Interpolations stay unresolved in what is remembered
    (environment variables are read when a copy is resolved); the config files are assumed not to change inside
    the block."""
    global _remembered
    outer = _remembered
    _remembered = {} if outer is None else outer
    try:
        yield
    finally:
        _remembered = outer


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config ``config_name`` with ``overrides``, as Hydra's command line would build it (inside a
    running Hydra job, with that job's config search path)."""
    key = (config_name, tuple(overrides))
    if _remembered is not None and key in _remembered:
        return copy.deepcopy(_remembered[key])
    cfg = _compose(config_name, overrides)
    if _remembered is not None:
        _remembered[key] = copy.deepcopy(cfg)
    return cfg


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
