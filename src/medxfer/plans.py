"""Plans: what one cell of work reads and computes, derived once from its composed stage config.

A plan holds what a stage needs before its expensive work and what a study manifest lists: the model spec and
its resolved weights, the dataset's tables, the score names and options (checked here, once), and the cells
with their ids. The score and fine-tune stages run a plan; a study's manifest is the list of its plans
(:meth:`medxfer.manifest.Manifest.from_plans`), so the cells a study expects are the cells its stages run by
construction. This module also owns the recipe that turns a plan's weights into a model and its preprocessing
(:func:`model_and_preprocess`).

Plans of one process share a :class:`Sources`: each dataset is read, and each model's weights identified, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from medxfer.cells import Cell, digest_store, finetune_cell, score_cell, split_name, splits_digest, weights_identity
from medxfer.data.datasets import NEEDED, load_dataset
from medxfer.scores.options import score_names, score_options

if TYPE_CHECKING:
    from medxfer.data.tables import DatasetSplits, SampleTable
    from medxfer.data.transforms import Preprocess
    from medxfer.models.zoo import ModelSpec, ResolvedWeights


def _key(node: dict[str, Any]) -> str:
    return repr(sorted(node.items()))


class Sources:
    """What the plans of one process read, read once: each dataset's splits (and their content digest), each
    model's weights and their identity, and the per-file digest memo of ``cache_dir``.

    ``listing=True`` names weights without using them (a study manifest): registry packages are not fetched and
    licences are not checked, as the cells are listed, not run."""

    def __init__(self, cache_dir: str | None, *, listing: bool = False):
        self.cache_dir = cache_dir
        self.listing = listing
        self.digests = digest_store(cache_dir)
        self._data: dict[tuple[str, tuple[str, ...]], DatasetSplits] = {}
        self._data_digest: dict[str, str] = {}
        self._weights: dict[tuple[str, bool], tuple[ModelSpec, ResolvedWeights, str]] = {}

    def data(self, dataset: dict[str, Any], needed: Iterable[str] = NEEDED) -> "DatasetSplits":
        """The splits of the dataset config ``dataset``; a split not in ``needed`` whose files are missing is left
        out and named (:func:`medxfer.data.datasets.load_dataset`)."""
        key = (_key(dataset), tuple(sorted(needed)))
        if key not in self._data:
            self._data[key] = load_dataset(dataset, needed=needed)
        return self._data[key]

    def data_digest(self, dataset: dict[str, Any]) -> str:
        """The content digest over every split of ``dataset`` (:func:`medxfer.cells.splits_digest`)."""
        key = _key(dataset)
        if key not in self._data_digest:
            self._data_digest[key] = splits_digest(self.data(dataset), self.digests)
        return self._data_digest[key]

    def weights(self, model: dict[str, Any], allow_noncommercial: bool) -> tuple["ModelSpec", "ResolvedWeights", str]:
        """The model config's spec, its resolved weights (fetched on first use unless listing) and their
        identity (:func:`medxfer.cells.weights_identity`)."""
        from medxfer.models.zoo import ModelSpec, resolve_weights

        key = (_key(model), allow_noncommercial)
        if key not in self._weights:
            spec = ModelSpec.from_config(model)
            weights = resolve_weights(spec, cache_dir=self.cache_dir, fetch=not self.listing,
                                      allow_noncommercial=self.listing or allow_noncommercial)
            self._weights[key] = (spec, weights, weights_identity(spec, weights, self.digests))
        return self._weights[key]


def _allow_noncommercial(c: dict[str, Any]) -> bool:
    return bool((c.get("zoo") or {}).get("allow_noncommercial"))


@dataclass(frozen=True)
class ScorePlan:
    """One (model, dataset) of the score stage: a cell per split it scores."""

    config: dict[str, Any]              # the resolved ``score`` config
    spec: "ModelSpec"
    weights: "ResolvedWeights"
    data: "DatasetSplits"
    names: list[str]
    options: dict[str, dict[str, Any]]
    tables: dict[str, "SampleTable"]    # split -> table, in the config's order
    cells: dict[str, Cell]              # split -> cell
    absent: list[str] = field(default_factory=list)  # splits asked for that the dataset lacks (no OOD set)


@dataclass(frozen=True)
class ScoreSettings:
    """What a score config asks for, checked without reading anything: the splits, score names and options."""

    splits: list[str]
    names: list[str]
    options: dict[str, dict[str, Any]]


def score_settings(c: dict[str, Any]) -> ScoreSettings:
    """The splits, score names and options of the resolved score config ``c``, checked (the one check): an
    unknown split, score or option is an error naming the config key."""
    try:
        splits = list(dict.fromkeys(split_name(s) for s in c["splits"]))
    except ValueError as err:
        raise ValueError(f"splits={c['splits']}: {err}") from None
    names = score_names(c["score"]["names"])
    return ScoreSettings(splits, names, score_options(c["score"].get("options"), c["model"], names))


def score_plan(c: dict[str, Any], sources: Sources | None = None, settings: ScoreSettings | None = None) -> ScorePlan:
    """The plan of the resolved score config ``c``: its settings (:func:`score_settings`, unless already
    checked), weights resolved, the dataset read, each split's cell."""
    sources = sources or Sources(c["paths"]["cache_dir"])
    settings = settings or score_settings(c)
    splits, names, options = settings.splits, settings.names, settings.options
    spec, weights, weights_id = sources.weights(c["model"], _allow_noncommercial(c))
    # an OOD set not on disk is named and left out, unless it is the only split asked for
    data = sources.data(c["dataset"], needed=[s for s in splits if s != "ood"] or splits)
    absent = [s for s in splits if s == "ood" and data.ood is None]
    tables = {s: data.train if s == "train" else data.ood for s in splits if s not in absent}
    cells = {s: score_cell(c, s, table, names, options, weights_id, sources.digests) for s, table in tables.items()}
    return ScorePlan(c, spec, weights, data, names, options, tables, cells, absent)


@dataclass(frozen=True)
class FinetunePlan:
    """One Halton trial at one seed of the fine-tune stage: its cell, and the scores it computes on the OOD set
    with the fine-tuned model."""

    config: dict[str, Any]              # the resolved ``finetune`` config
    spec: "ModelSpec"
    weights: "ResolvedWeights"
    data: "DatasetSplits"
    cell: Cell
    lr: float
    wd: float
    ood_names: list[str]
    ood_options: dict[str, dict[str, Any]]

    @property
    def cells(self) -> dict[str, Cell]:
        return {self.cell.split: self.cell}


def ood_score_names(c: dict[str, Any]) -> list[str]:
    """The scores a trial computes on the OOD set: none when the dataset has no OOD set or ``ood_scores`` is
    empty; those that cannot apply to a fine-tuned model (``imagenet_top1`` without a published top-1) left out."""
    from medxfer.scores.registry import split_applicable

    requested = c.get("ood_scores")
    if not c["dataset"].get("ood") or requested == []:
        return []
    names = score_names(requested, where="ood_scores")
    # the fine-tuned model always has a head; imagenet_top1 needs the model's published top-1
    names, _ = split_applicable(names, has_source_head=True, options=score_options(None, c["model"], names))
    return names


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune config asks for, checked without reading anything: the trial's Halton point and the scores
    computed on the OOD set."""

    lr: float
    wd: float
    ood_names: list[str]
    ood_options: dict[str, dict[str, Any]]


def finetune_settings(c: dict[str, Any]) -> FinetuneSettings:
    """The Halton point of ``trial`` in the search space and the OOD scores of the resolved fine-tune config
    ``c``, checked (the one check)."""
    from medxfer.training.halton import halton_trial

    ft = c["finetune"]
    lr, wd = halton_trial(c["trial"], ft["lr_bounds"], ft["wd_bounds"])
    names = ood_score_names(c)
    return FinetuneSettings(lr, wd, names, score_options(None, c["model"], names))  # imagenet_top1's top-1


def finetune_plan(c: dict[str, Any], sources: Sources | None = None,
                  settings: FinetuneSettings | None = None) -> FinetunePlan:
    """The plan of the resolved fine-tune config ``c`` (its ``trial`` and ``finetune.seed``): its settings
    (:func:`finetune_settings`, unless already checked), weights resolved, the dataset read, the cell (whose data
    digest covers every split and is shared by every trial of the dataset)."""
    sources = sources or Sources(c["paths"]["cache_dir"])
    s = settings or finetune_settings(c)
    spec, weights, weights_id = sources.weights(c["model"], _allow_noncommercial(c))
    data = sources.data(c["dataset"])
    cell = finetune_cell(c, sources.data_digest(c["dataset"]), weights_id)
    return FinetunePlan(c, spec, weights, data, cell, s.lr, s.wd, s.ood_names, s.ood_options)


def model_and_preprocess(spec: "ModelSpec", weights: "ResolvedWeights", preprocess: dict[str, Any],
                         dataset: str | None = None) -> tuple[Any, "Preprocess"]:
    """The model with its pretrained weights loaded, and the preprocessing it is evaluated with: the
    ``preprocess`` config over what the weights expect (timm's data config and the model config's ``data``).
    Warns when the weights were trained on data overlapping ``dataset``."""
    from medxfer.data.transforms import resolve_preprocess
    from medxfer.models.zoo import create_model, model_data_config, warn_if_leaking

    model = create_model(spec, weights)
    if dataset is not None:
        warn_if_leaking(spec, dataset)
    return model, resolve_preprocess(model_data_config(model, spec), preprocess)
