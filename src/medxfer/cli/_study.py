"""The tracked study a command reads, composed as ``medxfer-analyze`` composes it: its grid, and the settings its
score cells ran with (what a ranking must share for the study's taus to apply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from medxfer.workflows.grid import common_overrides, compose_config, score_overrides, study_manifest


@dataclass
class StudySettings:
    """``config``: the study's resolved analyze config; ``preprocess`` and ``options`` (non-default score
    options): those of its score cells, composed for its first cell."""

    config: dict[str, Any]
    preprocess: dict[str, Any]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def manifest(self) -> Any:
        """The study's manifest (its cells, by id); None for ``legacy=true`` (the newest run per model and
        dataset is read instead)."""
        return None if self.config.get("legacy") else study_manifest(self.config)


def study_settings(c: dict[str, Any]) -> StudySettings:
    """The study of a resolved command config ``c`` (``study``, ``paths``, ``tracking``, ``zoo`` and
    ``study_overrides``, the options ``medxfer-analyze`` would take, e.g. ``[experiment=paper]``)."""
    from medxfer.scores.options import non_default_options, score_names, score_options

    study = OmegaConf.to_container(compose_config("analyze", [*common_overrides(c), *(c.get("study_overrides") or [])]),
                                   resolve=True)
    first = OmegaConf.to_container(compose_config("score", score_overrides(study, study["models"][0],
                                                                           study["datasets"][0])), resolve=True)
    names = score_names(first["score"]["names"])
    options = non_default_options(score_options(first["score"].get("options"), first["model"], names))
    return StudySettings(study, first["preprocess"], options)
