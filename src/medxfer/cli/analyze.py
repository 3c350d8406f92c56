"""``medxfer-analyze``: correlations of transferability scores with fine-tuned accuracy, from tracked runs.

    medxfer-analyze                      # the default study
    medxfer-analyze study=pilot select.metric=val/bal_acc bootstrap.n=2000
    medxfer-analyze reference=chaves2023        # the paper's published table: intervals and noise ceiling
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.cli._hydra import task_overrides
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="analyze")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    if cfg.get("reference"):  # a published table, not a tracked study
        from medxfer.stages.reference import run_reference
        result = run_reference(cfg)
    else:
        from medxfer.workflows.study import analyze_study  # after composing: a typo fails before torch loads
        result = analyze_study(cfg, overrides=task_overrides())
    print("[analyze] figures:\n  " + "\n  ".join(str(p) for p in result.figures))


if __name__ == "__main__":
    main()
