"""``medxfer-rank``: which pretrained model should I fine-tune for my dataset?

    medxfer-rank dataset.path=/data/mine                        # a folder <class>/<image>, or a CSV file
    medxfer-rank dataset.path=/data/mine/labels.csv dataset.image_col=path dataset.label_col=finding
    medxfer-rank dataset=synthetic_mri score=ens_linear models=[efficientnet_lite0,efficientnet_lite2]

Ranks the models (default: the study's) by the ranker the evidence validates best (``score=auto``) or the one
asked for, with an interval for each rank; logs one MLflow run in ``<study>/rank`` and writes a report. The command
composes what the stage reads: each model's config and the study's grid.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medxfer.cli._errors import reports_errors
from medxfer.cli._hydra import task_overrides
from medxfer.cli._study import study_settings
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir
from medxfer.workflows.grid import compose_config
from medxfer.errors import ConfigError


def available_models() -> list[str]:
    """The model configs in ``conf/model/``."""
    return sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml"))


def model_configs(names: Any) -> dict[str, dict[str, Any]]:
    """Each model's config as ``medxfer-score model=<name>`` composes it, by name; unknown names are an error
    that lists the available ones."""
    if isinstance(names, str):
        names = [names]
    names = list(names or [])
    available = available_models()
    if not names or any(not isinstance(n, str) for n in names):
        raise ConfigError(f"models={names!r}: give a list of model configs, e.g. models=[efficientnet_lite0,"
                          f"efficientnet_lite1]; available: {', '.join(available)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"model(s) {dup} given more than once in models={names}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"unknown model config(s) {unknown}; available model configs (conf/model/): "
                          f"{', '.join(available)}")
    return {n: OmegaConf.to_container(compose_config("score", [f"model={n}"]).model, resolve=True) for n in names}


def rank_inputs(cfg: DictConfig):
    """The stage's :class:`medxfer.stages.rank.RankInputs` for the composed rank config: the study's grid and the
    settings of its score cells (:func:`medxfer.cli._study.study_settings`), and the config of each model
    (``models``, else the study's). Composed before the stage's libraries load, so a typo fails at once."""
    c = OmegaConf.to_container(cfg, resolve=True)
    study = study_settings(c)
    models = model_configs(c.get("models") or study.config["models"])
    from medxfer.stages.rank import RankInputs

    return RankInputs(models, study.config, study.preprocess, study.options, study.manifest)


def _dataset_path_hint(args: list[str]) -> None:
    """``dataset=<a path>`` names no config of the dataset group: say which option takes a path."""
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key == "dataset" and ("/" in value or value.lower().endswith(".csv") or value.startswith("~")):
            raise ConfigError(f"dataset={value}: the dataset group takes a config name (conf/dataset/); give your "
                              f"data's path as dataset.path={value} (a folder <class>/<image>, or a CSV file)")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="rank")
@reports_errors
def _main(cfg: DictConfig) -> None:
    filter_known_warnings()
    inputs = rank_inputs(cfg)
    from medxfer.stages.rank import run_rank

    run_rank(cfg, inputs, overrides=task_overrides())


def main() -> None:
    try:
        _dataset_path_hint(sys.argv[1:])
    except ConfigError as err:
        from medxfer.errors import exit_with_message

        exit_with_message(err)
    _main()


if __name__ == "__main__":
    main()
