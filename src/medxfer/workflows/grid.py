"""The study grid: each cell's stage config, composed as its own command would compose it, and the study's plans.

This module and the command-line layer (``medxfer.cli``) are the only places that compose Hydra configs; the
stages, the manifest and the analysis receive configs, plans and manifests as arguments. A study config
(``conf/study.yaml``, the ``grid`` group, ``experiment=...``) names models, datasets, the score stage's overrides,
the fine-tune trials, seeds and overrides; :class:`StudyGrid` turns it into stage configs (composed once each per
grid) and plans, and :func:`study_manifest` into the list of cells every reader of the study reads.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medxfer.config import config_dir
from medxfer.manifest import Manifest


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config ``config_name`` with ``overrides``, as Hydra's command line would build it (inside a
    running Hydra job, with that job's config search path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def common_overrides(c: dict[str, Any]) -> list[str]:
    """What a study passes down to each stage: the study's name, paths, tracking store, ``force`` and the zoo."""
    artifact_root = c["tracking"].get("artifact_root")
    return [
        f"study={c['study']}",
        f"force={str(c.get('force', False)).lower()}",
        f"paths.root_dir={c['paths']['root_dir']}",
        f"paths.data_dir={c['paths']['data_dir']}",
        f"paths.cache_dir={c['paths']['cache_dir']}",
        f"paths.output_dir={c['paths']['output_dir']}",
        f"tracking.uri={c['tracking']['uri']}",
        # a None written as "None" would reach the stages as the string 'None'
        f"tracking.artifact_root={'null' if artifact_root is None else artifact_root}",
        f"zoo.allow_noncommercial={str((c.get('zoo') or {}).get('allow_noncommercial', False)).lower()}",
    ]


def score_overrides(c: dict[str, Any], model: str, dataset: str) -> list[str]:
    """The overrides of ``medxfer-score`` for one (model, dataset) cell of the study ``c``."""
    return [f"model={model}", f"dataset={dataset}", *common_overrides(c), *c["score"]["overrides"]]


def finetune_overrides(c: dict[str, Any], model: str, dataset: str, trial: int, seed: int) -> list[str]:
    """The overrides of ``medxfer-finetune`` for one trial at one seed of the study ``c``."""
    return [f"model={model}", f"dataset={dataset}", f"trial={trial}", *common_overrides(c),
            *c["finetune"]["overrides"], f"finetune.seed={seed}"]


def analyze_overrides(c: dict[str, Any]) -> list[str]:
    """The overrides of ``medxfer-analyze`` for the study ``c`` (its grid is set on the composed config)."""
    return [*common_overrides(c), *c["analyze"]["overrides"]]


def grid(c: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, int, int]]]:
    """The study's (model, dataset) pairs and, when fine-tuning is enabled, its (model, dataset, trial, seed)s."""
    pairs = [(m, d) for d in c["datasets"] for m in c["models"]]
    ft = c["finetune"]
    trials = [(m, d, int(t), int(s)) for (m, d) in pairs for t in ft["trials"] for s in (ft.get("seeds") or [0])] \
        if ft.get("enabled", True) else []
    return pairs, trials


#: The keys of a study config that define its grid (the manifest); the analysis it runs reads the same grid.
GRID_KEYS = ("models", "datasets", "score", "finetune")


class StudyGrid:
    """The stage configs and plans of one study config ``c`` (a resolved ``study.yaml``, or an ``analyze.yaml`` /
    ``rank.yaml`` naming a study's grid). Each stage config is composed once per grid and handed out as a copy:
    a study composes every config for its stages, then the same ones again for its manifest, and one Hydra
    composition takes about a quarter of a second."""

    def __init__(self, c: dict[str, Any]):
        self.c = c
        self.pairs, self.trials = grid(c)
        self._composed: dict[tuple[str, tuple[str, ...]], DictConfig] = {}

    def _compose(self, name: str, overrides: list[str]) -> DictConfig:
        key = (name, tuple(overrides))
        if key not in self._composed:
            self._composed[key] = compose_config(name, overrides)
        return copy.deepcopy(self._composed[key])

    def score_config(self, model: str, dataset: str) -> DictConfig:
        """The score config of one (model, dataset) cell, as ``medxfer-score`` composes its overrides."""
        return self._compose("score", score_overrides(self.c, model, dataset))

    def trial_config(self, model: str, dataset: str, trial: int, seed: int) -> DictConfig:
        """The fine-tune config of one trial at one seed: the config of the pair's first trial and seed (composed
        once per pair) with ``trial`` and ``finetune.seed`` set, which is what ``medxfer-finetune`` composes from
        :func:`finetune_overrides`."""
        ft = self.c["finetune"]
        first_trial, first_seed = int(ft["trials"][0]), int((ft.get("seeds") or [0])[0])
        cfg = self._compose("finetune", finetune_overrides(self.c, model, dataset, first_trial, first_seed))
        cfg.trial = trial
        cfg.finetune.seed = seed
        return cfg

    def analyze_config(self) -> DictConfig:
        """The analyze config of the study, reading the cells of this grid."""
        cfg = self._compose("analyze", analyze_overrides(self.c))
        for key in GRID_KEYS:
            cfg[key] = self.c[key]
        return cfg

    def plans(self) -> list[Any]:
        """The plan of every cell of the grid, score cells first (datasets read and weights named once)."""
        from medxfer.plans import Sources, finetune_plan, score_plan

        sources = Sources(self.c["paths"]["cache_dir"], listing=True)
        resolved = lambda cfg: OmegaConf.to_container(cfg, resolve=True)  # noqa: E731
        plans: list[Any] = [score_plan(resolved(self.score_config(m, d)), sources) for m, d in self.pairs]
        plans += [finetune_plan(resolved(self.trial_config(m, d, t, s)), sources) for m, d, t, s in self.trials]
        return plans

    def manifest(self) -> Manifest:
        """Every cell of the study: the cells of its plans."""
        return Manifest.from_plans(self.c["study"], self.plans())


def study_models() -> list[str]:
    """The models of the default study (``conf/study.yaml`` with its grid, ``conf/grid/default.yaml``)."""
    return list(compose_config("study", []).models)


def trial_config(c: dict[str, Any], model: str, dataset: str, trial: int, seed: int) -> DictConfig:
    """The fine-tune config of one trial at one seed of the study ``c`` (:meth:`StudyGrid.trial_config`)."""
    return StudyGrid(c).trial_config(model, dataset, trial, seed)


def study_manifest(c: dict[str, Any]) -> Manifest:
    """Every cell of the study config ``c`` (a resolved ``study.yaml``, ``analyze.yaml`` or ``rank.yaml``).

    Reads each dataset's split tables and the digests of its images (remembered by file size and time, so a
    second look costs a stat per image), and names each model's weights without fetching them."""
    return StudyGrid(c).manifest()
