"""``medxfer-rank``: which pretrained model should I fine-tune for my dataset?

    medxfer-rank dataset=/data/mine/labels.csv                  # image,label[,group]; image paths relative to the CSV
    medxfer-rank dataset=/data/mine/labels.csv models=[efficientnet_lite0,efficientnet_lite2] score=ens_rank
    medxfer-rank dataset=synthetic_mri score=ens_linear study=default

Ranks the models by a transferability score on the dataset's training split, beside the tau that score reached
in the tracked study; logs one MLflow run in ``<study>/rank``.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.cli._hydra import task_overrides
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


def rank_overrides(args: Iterable[str]) -> list[str]:
    """The ``medxfer-rank`` command line as Hydra overrides of ``conf/rank.yaml``.

    - ``dataset=<path to a CSV file>`` (or to a folder holding ``labels.csv``) becomes ``dataset=csv
      dataset.root=<its folder> dataset.csv=<file name>``, plus ``dataset.group_col=group`` when the CSV has a
      ``group`` column and no ``dataset.group_col=`` is given (Hydra would refuse the path as an unknown option of
      the ``dataset`` group). A relative path is taken from the working directory.
    - ``dataset.csv=...`` without ``dataset=`` selects ``dataset=csv``.
    - ``score=<name>`` becomes ``rank.score=<name>``: ``score`` is also a config group (the score stage's), so
      Hydra would read it as one.

    Everything else (other overrides, Hydra flags) passes unchanged.
    """
    args = list(args)
    has_dataset = any(a.startswith("dataset=") for a in args)
    has_group = any(a.startswith("dataset.group_col=") for a in args)
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key == "score":
            out.append(f"rank.score={value}")
        elif eq and key == "dataset" and _is_path(value):
            out += _csv_overrides(_unquote(value), find_group=not has_group)
        else:
            out.append(arg)
    if not has_dataset and any(a.startswith("dataset.csv=") for a in args):
        out.insert(0, "dataset=csv")
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _is_path(value: str) -> bool:
    value = _unquote(value)
    return "/" in value or os.sep in value or value.startswith("~") or value.lower().endswith(".csv")


def _hydra_quote(value: str) -> str:
    """A Hydra override value that stays one string whatever the path holds (spaces, commas, '=')."""
    return "'" + value.replace("'", "\\'") + "'"


def _csv_overrides(value: str, *, find_group: bool) -> list[str]:
    path = Path(value).expanduser().absolute()
    root, name = (path, "labels.csv") if path.is_dir() else (path.parent, path.name)
    out = ["dataset=csv", f"dataset.root={_hydra_quote(str(root))}", f"dataset.csv={_hydra_quote(name)}"]
    if find_group and "group" in _csv_header(root / name):
        out.append("dataset.group_col=group")
    return out


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # reading the dataset reports it, naming the file


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="rank")
@reports_errors
def _main(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.stages.rank import run_rank  # after composing: a typo fails before torch loads
    run_rank(cfg, overrides=task_overrides())


def main() -> None:
    sys.argv[1:] = rank_overrides(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
