"""``medxfer-score``: transferability scores of (model, dataset) cells, logged to MLflow.

    medxfer-score model=efficientnet_lite0 dataset=synthetic_derm
    medxfer-score -m model=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 dataset=synthetic_derm
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.config import config_dir
from medxfer.cli._hydra import task_overrides
from medxfer.cli._warnings import filter_known_warnings


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="score")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.stages.score import run_score  # after composing: a typo fails before torch loads
    run_score(cfg, overrides=task_overrides())


if __name__ == "__main__":
    main()
