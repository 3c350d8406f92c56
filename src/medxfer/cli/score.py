"""``medxfer-score``: transferability scores of (model, dataset) cells, logged to MLflow.

    medxfer-score model=efficientnet_lite0 dataset=synthetic_derm
    medxfer-score -m model=efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 dataset=synthetic_derm
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medxfer.config import config_dir
from medxfer.cli._hydra import task_overrides
from medxfer.stages.score import run_score


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="score")
def main(cfg: DictConfig) -> None:
    run_score(cfg, overrides=task_overrides())


if __name__ == "__main__":
    main()
