"""``medxfer-finetune``: fine-tune Halton trials of (model, dataset) pairs, one MLflow run per trial.

    medxfer-finetune model=efficientnet_lite0 dataset=synthetic_derm trial=0
    medxfer-finetune -m model=efficientnet_lite0 dataset=synthetic_derm trial=0,1 finetune=smoke
    medxfer-finetune -m model=efficientnet_lite0 dataset=isic2019 trial='range(0,75)' finetune=paper
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.config import config_dir
from medxfer.cli._hydra import task_overrides
from medxfer.cli._warnings import filter_known_warnings


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="finetune")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.stages.finetune import run_finetune  # after composing: a typo fails before torch loads
    run_finetune(cfg, overrides=task_overrides())


if __name__ == "__main__":
    main()
