"""The study manifest: from a study config, every cell each stage is expected to produce.

A study config (``conf/study.yaml``, the ``grid`` group, ``experiment=...``) names models, datasets, the score
stage's overrides, the fine-tune trials, seeds and overrides. The study runs each cell with the stage config
composed here, and the analysis (``medxfer-analyze``), ``medxfer-rank``'s tau and the notebook read exactly the
manifest's cells, by cell id: a run with other settings in the same experiment is never read, and a missing one is
named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medxfer.cells import (Cell, digest_store, finetune_cell, hash_parts, score_cell, split_name, splits_digest,
                           weights_identity)
from medxfer.config import compose_config, remembered_compositions


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


def trial_config(c: dict[str, Any], model: str, dataset: str, trial: int, seed: int) -> DictConfig:
    """The fine-tune config of one trial at one seed of the study ``c``: the config of the pair's first trial and
    seed (composed once per pair inside :func:`medxfer.config.remembered_compositions`) with ``trial`` and
    ``finetune.seed`` set, which is what ``medxfer-finetune`` composes from :func:`finetune_overrides`."""
    first_trial, first_seed = int(c["finetune"]["trials"][0]), int((c["finetune"].get("seeds") or [0])[0])
    cfg = compose_config("finetune", finetune_overrides(c, model, dataset, first_trial, first_seed))
    cfg.trial = trial
    cfg.finetune.seed = seed
    return cfg


def grid(c: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, int, int]]]:
    """The study's (model, dataset) pairs and, when fine-tuning is enabled, its (model, dataset, trial, seed)s."""
    pairs = [(m, d) for d in c["datasets"] for m in c["models"]]
    ft = c["finetune"]
    trials = [(m, d, int(t), int(s)) for (m, d) in pairs for t in ft["trials"] for s in (ft.get("seeds") or [0])] \
        if ft.get("enabled", True) else []
    return pairs, trials


@dataclass
class Manifest:
    """The cells a study expects, per stage."""

    study: str
    score: list[Cell] = field(default_factory=list)
    finetune: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a dataset without an OOD set: no ood score cells

    @property
    def id(self) -> str:
        """A hash of every cell id: two analyses of the same manifest read the same cells."""
        return hash_parts(sorted(self.ids("score")) + sorted(self.ids("finetune")))

    def ids(self, stage: str) -> list[str]:
        """The cell ids of one stage (``score`` or ``finetune``)."""
        return [cell.id for cell in getattr(self, stage)]


def study_manifest(c: dict[str, Any]) -> Manifest:
    """Every cell of the study config ``c`` (a resolved container of ``study.yaml`` or ``analyze.yaml``).

    Reads each dataset's split tables and the digests of its images (remembered by file size and time, so a
    second look costs a stat per image), and names each model's weights without fetching them.
    """
    from medxfer.data.datasets import load_dataset
    from medxfer.models.zoo import ModelSpec, resolve_weights
    from medxfer.scores.options import score_names, score_options

    pairs, trials = grid(c)
    manifest = Manifest(c["study"])
    digests = digest_store(c["paths"]["cache_dir"])
    data_of: dict[str, Any] = {}
    data_digest_of: dict[str, str] = {}
    weights_of: dict[str, str] = {}

    def data(dataset_cfg: dict[str, Any]) -> Any:
        key = repr(sorted(dataset_cfg.items()))
        if key not in data_of:
            data_of[key] = load_dataset(dataset_cfg)
        return data_of[key]

    def data_digest(dataset_cfg: dict[str, Any]) -> str:  # every trial and seed of a dataset reads the same splits
        key = repr(sorted(dataset_cfg.items()))
        if key not in data_digest_of:
            data_digest_of[key] = splits_digest(data(dataset_cfg), digests)
        return data_digest_of[key]

    def weights(model_cfg: dict[str, Any]) -> str:
        key = repr(sorted(model_cfg.items()))
        if key not in weights_of:
            spec = ModelSpec.from_config(model_cfg)
            weights_of[key] = weights_identity(spec, resolve_weights(spec, cache_dir=c["paths"]["cache_dir"],
                                                                     allow_noncommercial=True, fetch=False), digests)
        return weights_of[key]

    for m, d in pairs:
        sc = OmegaConf.to_container(compose_config("score", score_overrides(c, m, d)), resolve=True)
        names = score_names(sc["score"]["names"])
        options = score_options(sc["score"].get("options"), sc["model"], names)
        splits = data(sc["dataset"])
        for split in dict.fromkeys(split_name(s) for s in sc["splits"]):
            table = splits.train if split == "train" else splits.ood
            if table is None:
                manifest.notes.append(f"{d} has no out-of-distribution set: no {split} score cells")
                continue
            manifest.score.append(score_cell(sc, split, table, names, options, weights(sc["model"]), digests))
    with remembered_compositions():
        for m, d, t, s in trials:
            fc = OmegaConf.to_container(trial_config(c, m, d, t, s), resolve=True)
            manifest.finetune.append(finetune_cell(fc, data_digest(fc["dataset"]), weights(fc["model"])))
    manifest.notes = list(dict.fromkeys(manifest.notes))
    return manifest
