"""``medxfer-data``: what a dataset holds and what is wrong with it, before a long job runs on it.

    medxfer-data dataset=isic2019 dataset.root=/data/paper
    medxfer-data dataset=breakhis format=json images=decode

Prints per split (train, val, test, ood) the count of each class, the groups, and every problem found (missing
files, unreadable images, an image or a group in two splits); exits 1 when there is a problem, 2 when the dataset
cannot be read at all (as every command's own errors).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="data")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.stages.data import render, run_data  # after composing: a typo fails before torch loads
    report = run_data(cfg)
    print(render(report, cfg.format))
    if report.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
