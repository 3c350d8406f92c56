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
from medxfer.training.halving import Halving
from medxfer.workflows.search import search_settings, search_state


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
    """The study's (model, dataset) pairs and, when fine-tuning is enabled with ``finetune.search=grid``, its
    (model, dataset, trial, seed)s. A halving search's trials depend on its results (:class:`StudyGrid`)."""
    pairs = [(m, d) for d in c["datasets"] for m in c["models"]]
    ft = c["finetune"]
    if not ft.get("enabled", True) or ft.get("search", "grid") != "grid":
        return pairs, []
    return pairs, [(m, d, int(t), int(s)) for (m, d) in pairs for t in ft["trials"] for s in (ft.get("seeds") or [0])]


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
        ft = c["finetune"]
        self.search = search_settings(ft) if ft.get("enabled", True) else None
        self._composed: dict[tuple[str, tuple[str, ...]], DictConfig] = {}
        self._finished: dict[str, dict[str, float]] | None = None
        self._listing: Any = None
        self._notes: list[str] = []
        self._max_epochs: dict[tuple[str, str], int] = {}

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

    def protocol_tags(self, model: str, dataset: str, rung: int | None = None) -> dict[str, str]:
        """The fine-tune protocol as tags for the runs of (model, dataset) (and, under halving, the rung), which
        the study puts on every fine-tune run it starts: not part of the cell, nor of its config."""
        if self.search is None:
            return {}
        tags = self.search.protocol(self.max_epochs(model, dataset))
        if rung is not None:
            tags["search_rung"] = f"{rung + 1}/{self.halving(model, dataset).rungs}"
        return tags

    def halving(self, model: str, dataset: str) -> Halving:
        """The halving search of one (model, dataset): the study's points up to its fine-tune config's epochs."""
        assert self.search is not None and self.search.kind == "halving", "finetune.search is not halving"
        return self.search.halving(self.max_epochs(model, dataset))

    def max_epochs(self, model: str, dataset: str) -> int:
        """The full budget of (model, dataset)'s trials, from its fine-tune config (read once per pair: the rung
        and protocol of every trial of a search ask for it)."""
        if (model, dataset) not in self._max_epochs:
            ft = self.search
            cfg = self.trial_config(model, dataset, ft.points[0], ft.seeds[0])
            self._max_epochs[model, dataset] = int(cfg.finetune.max_epochs)
        return self._max_epochs[model, dataset]

    def rung_config(self, model: str, dataset: str, point: int, rung: int, seed: int) -> DictConfig:
        """The fine-tune config of one rung of one point of the halving search of (model, dataset): the trial's
        config stopping at the rung's budget (``finetune.stop_epoch``; the last rung is the trial's full budget)."""
        h = self.halving(model, dataset)
        cfg = self.trial_config(model, dataset, point, seed)
        cfg.finetune.stop_epoch = None if rung == h.rungs - 1 else h.budgets[rung]
        return cfg

    def finished_metrics(self) -> dict[str, dict[str, float]]:
        """The metrics of the newest FINISHED run of each fine-tune cell in the study's store (read once)."""
        if self._finished is None:
            from medxfer import tracking

            tracking.setup_tracking(self.c["tracking"]["uri"])
            experiment = tracking.experiment_id_of(f"{self.c['study']}/finetune")
            runs = tracking.search_all(experiment, "attributes.status = 'FINISHED'") if experiment else []
            newest: dict[str, Any] = {}
            for run in runs:
                cell = run.data.tags.get("cell")
                if cell and (cell not in newest or run.info.start_time > newest[cell].info.start_time):
                    newest[cell] = run
            self._finished = {cell: dict(run.data.metrics) for cell, run in newest.items()}
        return self._finished

    def search_configs(self, model: str, dataset: str) -> tuple[list[DictConfig], str | None]:
        """The fine-tune configs of one (model, dataset) that its ground truth reads, with a note when the search
        is unfinished: under halving, the selected point at every seed once the search has finished (read from the
        store), else the rung cells still to train."""
        from medxfer.plans import finetune_plan

        ft = self.search
        h = self.halving(model, dataset)
        cfg = lambda point, rung, seed: self.rung_config(model, dataset, point, rung, seed)  # noqa: E731
        cell = lambda point, rung: finetune_plan(  # noqa: E731
            OmegaConf.to_container(cfg(point, rung, ft.seeds[0]), resolve=True), self._sources()).cell.id
        state = search_state(h, lambda point, rung: self.finished_metrics().get(cell(point, rung)))
        if state.selected is not None:
            return [cfg(state.selected, h.rungs - 1, seed) for seed in ft.seeds], None
        note = (f"{model}@{dataset}: the halving search is unfinished: rung {state.rung + 1}/{h.rungs} has "
                f"point(s) {state.pending} to train")
        return [cfg(point, state.rung, ft.seeds[0]) for point in state.pending], note

    def _sources(self) -> Any:
        from medxfer.plans import Sources

        if self._listing is None:  # weights named, not fetched: the cells are listed, not run
            self._listing = Sources(self.c["paths"]["cache_dir"], listing=True)
        return self._listing

    def analyze_config(self) -> DictConfig:
        """The analyze config of the study, reading the cells of this grid."""
        cfg = self._compose("analyze", analyze_overrides(self.c))
        for key in GRID_KEYS:
            cfg[key] = self.c[key]
        return cfg

    def plans(self) -> list[Any]:
        """The plan of every cell of the grid, score cells first (datasets read and weights named once)."""
        from medxfer.plans import finetune_plan, score_plan

        sources = self._sources()
        resolved = lambda cfg: OmegaConf.to_container(cfg, resolve=True)  # noqa: E731
        plans: list[Any] = [score_plan(resolved(self.score_config(m, d)), sources) for m, d in self.pairs]
        plans += [finetune_plan(resolved(self.trial_config(m, d, t, s)), sources) for m, d, t, s in self.trials]
        self._notes = []
        if self.search is not None and self.search.kind == "halving":
            for m, d in self.pairs:
                configs, note = self.search_configs(m, d)
                plans += [finetune_plan(resolved(cfg), sources) for cfg in configs]
                self._notes += [note] if note else []
        return plans

    def manifest(self) -> Manifest:
        """Every cell of the study: the cells of its plans (under halving, those its search has reached)."""
        manifest = Manifest.from_plans(self.c["study"], self.plans())
        manifest.notes += self._notes
        return manifest

    def protocol_title(self) -> str | None:
        """The fine-tune protocol in one line (:meth:`medxfer.workflows.search.SearchSettings.title`)."""
        if self.search is None:
            return None
        return self.search.title(self.max_epochs(*self.pairs[0]))


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
