"""``medxfer-data``: what a dataset holds and what is wrong with it, before a long job runs on it.

    medxfer-data dataset=isic2019 dataset.root=/data/paper
    medxfer-data dataset=breakhis format=json images=decode
    medxfer-data fetch brain_tumor paths.data_dir=/data/medical

Prints per split (train, val, test, ood) the count of each class, the groups, and every problem found (missing
files, unreadable images, an image or a group in two splits) and the leaks between given splits; exits 1 when
there is a problem, 2 when the dataset cannot be read at all (as every command's own errors).

``fetch <dataset>`` downloads a dataset that has a public archive (BrainTumor), checks every file against the
SHA-256 digests shipped with medxfer and places it under ``dataset.root``; for the others it says where to get
them (exit 2).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "fetch":
        _fetch(sys.argv[2:])
    else:
        _report()


@reports_errors
def _fetch(argv: list[str]) -> None:
    if not argv or "=" in argv[0]:
        print("usage: medxfer-data fetch <dataset> [paths.data_dir=/data] [fetch.url=...]", file=sys.stderr)
        sys.exit(2)
    filter_known_warnings()
    from hydra import compose, initialize_config_dir

    from medxfer.stages.data import run_fetch

    from hydra.errors import HydraException

    from medxfer.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="data", overrides=[f"dataset={argv[0]}", *argv[1:]])
    except HydraException as err:  # e.g. a dataset without a config
        raise ConfigError(f"medxfer-data fetch {' '.join(argv)}: {err}") from None
    run_fetch(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="data")
@reports_errors
def _report(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.stages.data import render, run_data  # after composing: a typo fails before torch loads
    report = run_data(cfg)
    print(render(report, cfg.format))
    if report.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
