"""``medxfer-study`` (what `make study` runs): the default study end to end, logged to MLflow.

    medxfer-study                         # 3 EfficientNet-Lite models x 3 synthetic datasets, offline
    medxfer-study study=mine models=[efficientnet_lite0] datasets=[synthetic_mri]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medxfer.cli._errors import reports_errors
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="study")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    from medxfer.workflows.study import run_study  # after composing: a typo fails before torch loads
    report = run_study(cfg)
    print("[study] done: " + "; ".join(
        f"{stage} {c['ran']} ran, {c['skipped']} already finished ({report.seconds[stage]:.0f} s)"
        for stage, c in report.counts.items()
    ))
    analysis = report.outputs.get("analysis")
    if analysis is not None and analysis.figures:
        print("[study] figures:\n  " + "\n  ".join(str(p) for p in analysis.figures))
    from medxfer.tracking.ui import ui_hint
    print(f"[study] {ui_hint(cfg.tracking.uri, [f'{cfg.study}/analysis', f'{cfg.study}/score'])}")


if __name__ == "__main__":
    main()
