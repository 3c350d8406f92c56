"""The score stage: transferability scores of one (model, dataset) cell, one MLflow run per split.

Order of work, so that a bad setup fails before anything expensive: tracking store reachable → finished cells
skipped → weights resolved and model built → data read and split → features (cache or forward pass) → scores.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from omegaconf import DictConfig, OmegaConf

from medxfer.data.datasets import check_scoreable, load_dataset
from medxfer.data.tables import SampleTable
from medxfer.data.transforms import resolve_preprocess
from medxfer.models.extract import FeatureCache, Features, cache_key, extract_features
from medxfer.models.zoo import ModelSpec, create_model, model_data_config, resolve_weights, state_dict_digest
from medxfer.tracking import cell_id, cell_run, ensure_experiment, find_finished_run, reap_dead_runs, setup_tracking

log = logging.getLogger(__name__)

SPLITS = ("iid", "ood")


@dataclass
class CellResult:
    """What one split of a score cell produced: the run id and its score values (None when skipped)."""

    split: str
    run_id: str | None
    scores: dict[str, float] | None
    skipped: bool
    cached_features: bool = False


def dataset_identity(node: Any) -> Any:
    """A dataset config without data locations or display options: what makes a cell (score or fine-tune)
    distinct. Moving the data folder does not make a new cell."""
    if isinstance(node, dict):
        return {k: dataset_identity(v) for k, v in node.items() if k not in ("root", "download_hint", "progress")}
    return node


def score_names(requested: list[str] | None) -> list[str]:
    """The score names to compute: all registered ones when ``requested`` is None; unknown names are an error."""
    from medxfer.scores import available_scores

    known = list(available_scores())
    if requested is None:
        return known
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown} in score.names; registered scores: {known}")
    return list(requested)


def score_cell_ids(c: dict[str, Any], names: list[str]) -> dict[str, str]:
    base = {
        "stage": "score", "model": c["model"], "dataset": dataset_identity(c["dataset"]),
        "preprocess": c["preprocess"], "scores": names,
    }
    return {split: cell_id({**base, "split": split}) for split in c["splits"]}


def run_score(cfg: DictConfig, overrides: list[str] | None = None) -> list[CellResult]:
    """Score one (model, dataset) cell on each split in ``cfg.splits``; returns one result per split."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    bad = [s for s in c["splits"] if s not in SPLITS]
    if bad:
        raise ValueError(f"splits={c['splits']}: unknown split(s) {bad}; expected a subset of {list(SPLITS)}")
    names = score_names(c["score"]["names"])
    setup_tracking(c["tracking"]["uri"])
    experiment_id = ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    reap_dead_runs(experiment_id)
    cells = score_cell_ids(c, names)
    model_name, dataset_name = c["model"]["name"], c["dataset"]["name"]
    results, todo = [], []
    for split in c["splits"]:
        done = None if c["force"] else find_finished_run(experiment_id, cells[split])
        if done:
            results.append(CellResult(split, done, None, skipped=True))
        else:
            todo.append(split)
    print(f"[score] {model_name} x {dataset_name}: {len(c['splits']) - len(todo)} of {len(c['splits'])} split(s) done, {len(todo)} to do", flush=True)
    if not todo:
        return results

    spec = ModelSpec.from_config(c["model"])
    weights = resolve_weights(spec)
    model = create_model(spec, weights)
    data = load_dataset(c["dataset"])
    if "ood" in todo and data.ood is None:
        print(f"[score] {dataset_name} has no out-of-distribution set; skipping split ood", flush=True)
        todo.remove("ood")
    tables = {split: data.train if split == "iid" else data.ood for split in todo}
    for table in tables.values():
        check_scoreable(table)
    weights_digest = state_dict_digest(model)
    preprocess = resolve_preprocess(model_data_config(model), c["preprocess"])
    cache = FeatureCache(c["paths"]["cache_dir"] + "/features")

    for split, table in tables.items():
        tags = {
            "stage": "score", "model": model_name, "dataset": dataset_name, "split": split,
            "study": c["study"], "cell": cells[split], "weights_source": weights.kind,
            "weights_digest": weights_digest, "split_digest": table.digest(),
            **{str(k): str(v) for k, v in (c.get("tags") or {}).items()},
        }
        with cell_run(experiment_id, run_name=f"{model_name}-{dataset_name}-{split}", tags=tags, config=c, overrides=overrides) as run:
            mlflow.log_dict({"class_names": list(data.class_names), "label_mapping": data.label_mapping,
                             "class_counts": table.class_counts()}, "labels.json")
            key = cache_key(arch=spec.arch, weights=weights_digest, dataset=dataset_name, split=split,
                            split_digest=table.digest(), preprocess=preprocess.as_dict())
            path = cache.path(model_name, dataset_name, split, key)
            t0 = time.perf_counter()
            feats = cache.load(path)
            cached = feats is not None
            if feats is None:
                ex = c["extract"]
                feats = extract_features(model, table, preprocess, batch_size=ex["batch_size"],
                                         num_workers=ex["num_workers"], accelerator=ex["accelerator"],
                                         progress=ex["progress"])
                cache.save(path, feats)
            if not np.array_equal(feats.labels, table.labels):
                raise RuntimeError(f"feature cache {path} holds labels that differ from split {table.name}; delete it")
            mlflow.log_metric("time/extract_s", time.perf_counter() - t0)
            mlflow.log_params({"n_samples": len(table), "feat_dim": feats.features.shape[1],
                               "n_classes": int(len(np.unique(table.labels))), "features_cached": cached,
                               "preprocess": str(preprocess.as_dict())})
            with _single_thread(bool(c["score"].get("deterministic", True))):
                values = _compute_and_log(feats, table, names, c["score"].get("device"))
            results.append(CellResult(split, run.info.run_id, values, skipped=False, cached_features=cached))
        print(f"[score] {model_name} x {dataset_name} [{split}] " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()), flush=True)
    return results


@contextlib.contextmanager
def _single_thread(enabled: bool):
    """Run torch on one CPU thread: multi-threaded reductions (MKL) change the last bits of the scores from
    run to run; with one thread a cell reproduces exactly on the same machine."""
    if not enabled:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute_and_log(feats: Features, table: SampleTable, names: list[str], device: str | None) -> dict[str, float]:
    """Compute the scores, log ``score/<name>`` and ``time/<name>_s``; log fallbacks as warnings.txt.

    When one score fails, the others are still computed and logged, then the run fails naming the failures.
    """
    from medxfer.scores import ScoreError, ScoreWarning, compute_scores

    values, timings, failures = {}, {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScoreWarning)
        try:
            values = compute_scores(feats.features, table.labels, feats.probs, names, device=device, timings=timings)
        except ScoreError:
            for name in names:  # isolate the failing score(s), keep the rest
                t = {}
                try:
                    values.update(compute_scores(feats.features, table.labels, feats.probs, [name], device=device, timings=t))
                    timings.update(t)
                except ScoreError as err:
                    failures[name] = str(err)
    for name, value in values.items():
        if not np.isfinite(value):
            failures[name] = f"non-finite value {value}"
    mlflow.log_metrics({f"score/{k}": float(v) for k, v in values.items() if k not in failures})
    mlflow.log_metrics({f"time/{k}_s": float(v) for k, v in timings.items()})
    notes = [str(w.message) for w in caught if issubclass(w.category, ScoreWarning)]
    if notes:
        mlflow.log_text("\n".join(notes) + "\n", "warnings.txt")
        mlflow.set_tag("score_warnings", str(len(notes)))
        for note in notes:
            log.warning("%s", note)
    if failures:
        raise ScoreError("scores failed on split " + table.name + ": " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    return {k: float(v) for k, v in values.items()}
