"""``medxfer-evidence``: the evidence table medxfer ships, written from a tracked study's newest analysis run.

    medxfer-evidence                                                  # ./mlruns, study default -> the shipped file
    medxfer-evidence tracking.uri=sqlite:////copy/mlflow.db output=/tmp/evidence.json

``medxfer-rank`` reads it when the tracking store has no runs of the study.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from medxfer.cli._errors import reports_errors
from medxfer.cli._study import study_settings
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir


def write_evidence(cfg: DictConfig) -> Path:
    """Write the evidence of ``cfg.study`` (its newest analysis run of exactly its manifest) to ``cfg.output``,
    by default the shipped file; returns the path."""
    from medxfer.analysis.evidence import study_protocol
    from medxfer.results import NoAnalysisRun, analysis_evidence, has_finished_runs
    from medxfer.errors import ConfigError
    from medxfer.stages.rank import SHIPPED
    from medxfer.tracking import setup_tracking

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    setup_tracking(c["tracking"]["uri"])
    if not has_finished_runs(c["study"]):
        raise ConfigError(f"study={c['study']}: the tracking store {c['tracking']['uri']} has no runs of it; run the "
                          "study (make study) or point tracking.uri at its store")
    settings = study_settings(c)
    manifest = settings.manifest()
    try:
        evidence = analysis_evidence(c["study"], manifest.id if manifest is not None else None,
                                     study_protocol(settings.config, settings.preprocess, settings.options))
    except NoAnalysisRun as err:
        raise ConfigError(str(err)) from None
    from medxfer.config import reference_dir

    out = Path(c["output"]) if c.get("output") else Path(reference_dir()) / SHIPPED
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(evidence.to_json())
    print(f"[evidence] {evidence.describe()}: {len(evidence.rankers)} rankers -> {out}", flush=True)
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evidence")
@reports_errors
def main(cfg: DictConfig) -> None:
    filter_known_warnings()
    write_evidence(cfg)


if __name__ == "__main__":
    main()
