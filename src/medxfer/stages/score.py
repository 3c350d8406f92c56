"""The score stage: transferability scores of one (model, dataset) cell, one MLflow run per split.

Order of work, so that a bad setup fails before anything expensive: tracking store reachable → finished cells
skipped → weights resolved and model built → data read and split → features (cache or forward pass) → scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from omegaconf import DictConfig, OmegaConf

from medxfer.data.datasets import check_scoreable, load_dataset
from medxfer.data.tables import SampleTable
from medxfer.data.transforms import resolve_preprocess
from medxfer.models.extract import FeatureCache, Features, cache_key, extract_features
from medxfer.models.zoo import (
    ModelSpec, create_model, model_data_config, model_tags, resolve_weights, state_dict_digest, warn_if_leaking,
)
from medxfer.scores.isolated import compute_isolated, single_thread
from medxfer.scores.registry import split_applicable
from medxfer.tracking import cell_id, cell_run, ensure_experiment, find_finished_run, reap_dead_runs, setup_tracking
from medxfer.tracking.retry import retry_locked

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
    """The score names to compute: every registered one (opt-in scores included) when ``requested`` is None;
    unknown names are an error."""
    from medxfer.scores import available_scores

    known = list(available_scores(include_opt_in=True))
    if requested is None:
        return known
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown} in score.names; registered scores: {known}")
    return list(requested)


def _normalised(value: Any) -> Any:
    return tuple(_normalised(v) for v in value) if isinstance(value, (list, tuple)) else value


def score_options(given: dict[str, Any] | None, model: dict[str, Any], names: list[str], *,
                  where: str = "score.options") -> dict[str, dict[str, Any]]:
    """Options of the requested scores (``score.options``; ``where`` names the config key in errors), checked
    against each score's signature before any work, plus ``imagenet_top1``'s ``top1`` from the model config's
    ``imagenet_top1`` unless given."""
    from medxfer.scores import REGISTRY
    from medxfer.scores.registry import score_options as accepted_options

    given = dict(given or {})
    unknown = sorted(set(given) - set(REGISTRY))
    if unknown:
        raise ValueError(f"{where} names unknown score(s) {unknown}; registered scores: {list(REGISTRY)}")
    options = {}
    for name in names:
        opts = dict(given.get(name) or {})
        accepted = accepted_options(name)  # None: the score takes any keyword
        bad = [] if accepted is None else sorted(set(opts) - set(accepted))
        if bad:
            raise ValueError(f"{where}.{name}: unknown option(s) {bad}; {name} accepts {list(accepted or ())}")
        if name == "imagenet_top1" and "top1" not in opts:
            opts["top1"] = model.get("imagenet_top1")
        if opts:
            options[name] = opts
    return options


def _non_default(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The options that differ from each score's defaults: what makes two cells compute different values (so
    spelling out a default does not make a new cell)."""
    import inspect

    from medxfer.scores import REGISTRY

    out = {}
    for name, opts in options.items():
        params = inspect.signature(REGISTRY[name].fn).parameters
        changed = {k: v for k, v in opts.items()
                   if k not in params or _normalised(v) != _normalised(params[k].default)}
        if changed:
            out[name] = changed
    return out


# model config keys that describe the weights without changing a value computed from them
DESCRIPTIVE_MODEL_KEYS = ("licence", "pretraining", "commercial", "leaks_into", "head_classes")


def model_identity(model: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """The model config as part of a cell: descriptive keys (licence, what the weights were trained on) are
    left out, and the published ImageNet top-1 matters only to the ``imagenet_top1`` score (filling them in
    must not turn finished cells into new ones)."""
    keep = dict(model) if names is not None and "imagenet_top1" in names else {k: v for k, v in model.items() if k != "imagenet_top1"}
    return {k: v for k, v in keep.items() if k not in DESCRIPTIVE_MODEL_KEYS}


def score_cell_ids(c: dict[str, Any], names: list[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    base = {
        "stage": "score", "model": model_identity(c["model"], names), "dataset": dataset_identity(c["dataset"]),
        "preprocess": c["preprocess"], "scores": names,
    }
    changed = _non_default({k: v for k, v in (options or {}).items() if k != "imagenet_top1"})
    if changed:
        base["options"] = changed
    return {split: cell_id({**base, "split": split}) for split in c["splits"]}


def run_score(cfg: DictConfig, overrides: list[str] | None = None) -> list[CellResult]:
    """Score one (model, dataset) cell on each split in ``cfg.splits``; returns one result per split."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    bad = [s for s in c["splits"] if s not in SPLITS]
    if bad:
        raise ValueError(f"splits={c['splits']}: unknown split(s) {bad}; expected a subset of {list(SPLITS)}")
    names = score_names(c["score"]["names"])
    options = score_options(c["score"].get("options"), c["model"], names)
    setup_tracking(c["tracking"]["uri"])
    experiment_id = ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    reap_dead_runs(experiment_id)
    cells = score_cell_ids(c, names, options)
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
    weights = resolve_weights(spec, cache_dir=c["paths"]["cache_dir"], allow_noncommercial=bool((c.get("zoo") or {}).get("allow_noncommercial")))
    model = create_model(spec, weights)
    warn_if_leaking(spec, dataset_name)
    applicable, not_applicable = split_applicable(names, has_source_head=spec.head_size > 0, options=options)
    if not applicable:  # only inapplicable scores were asked for: computing them fails in the run, saying why
        applicable, not_applicable = names, []
    data = load_dataset(c["dataset"])
    if "ood" in todo and data.ood is None:
        print(f"[score] {dataset_name} has no out-of-distribution set; skipping split ood", flush=True)
        todo.remove("ood")
    tables = {split: data.train if split == "iid" else data.ood for split in todo}
    for table in tables.values():
        check_scoreable(table)
    weights_digest = state_dict_digest(model)
    preprocess = resolve_preprocess(model_data_config(model, spec), c["preprocess"])
    cache = FeatureCache(c["paths"]["cache_dir"] + "/features")

    for split, table in tables.items():
        tags = {
            "stage": "score", "model": model_name, "dataset": dataset_name, "split": split,
            "study": c["study"], "cell": cells[split], "weights_source": weights.kind,
            "weights_digest": weights_digest, "split_digest": table.digest(), **model_tags(spec, dataset_name),
            **({"scores_not_applicable": ",".join(not_applicable)} if not_applicable else {}),
            **{str(k): str(v) for k, v in (c.get("tags") or {}).items()},
        }
        with cell_run(experiment_id, run_name=f"{model_name}-{dataset_name}-{split}", tags=tags, config=c, overrides=overrides) as run:
            retry_locked(mlflow.log_dict, {"class_names": list(data.class_names), "label_mapping": data.label_mapping,
                             "class_counts": table.class_counts()}, "labels.json")
            t0 = time.perf_counter()
            feats, cached = split_features(model, spec, weights_digest, table, dataset_name, split, preprocess,
                                           cache, c["extract"])
            retry_locked(mlflow.log_metric, "time/extract_s", time.perf_counter() - t0)
            retry_locked(mlflow.log_params, {"n_samples": len(table), "feat_dim": feats.features.shape[1],
                               "n_classes": int(len(np.unique(table.labels))), "features_cached": cached,
                               "preprocess": str(preprocess.as_dict()), "source_head_size": spec.head_size})
            with single_thread(bool(c["score"].get("deterministic", True))):
                values = _compute_and_log(feats, table, applicable, c["score"].get("device"), options)
            results.append(CellResult(split, run.info.run_id, values, skipped=False, cached_features=cached))
        print(f"[score] {model_name} x {dataset_name} [{split}] " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()), flush=True)
    return results


def split_features(model: Any, spec: ModelSpec, weights_digest: str, table: SampleTable, dataset_name: str,
                   split: str, preprocess: Any, cache: FeatureCache, extract: dict[str, Any]) -> tuple[Features, bool]:
    """Features and source probabilities of one split, from the feature cache or extracted (then cached).

    The cache key holds the architecture, the weights' digest, the dataset, the split (its sample ids and labels,
    and the images' paths, sizes and modification times), and the preprocessing; ``medxfer-score`` and
    ``medxfer-rank`` share it. Returns ``(features, came_from_the_cache)``.
    """
    key = cache_key(arch=spec.arch, weights=weights_digest, dataset=dataset_name, split=split,
                    split_digest=table.digest(), content=table.content_digest(), preprocess=preprocess.as_dict())
    path = cache.path(spec.name, dataset_name, split, key)
    feats = cache.load(path)
    cached = feats is not None
    if feats is None:
        feats = extract_features(model, table, preprocess, batch_size=extract["batch_size"],
                                 num_workers=extract["num_workers"], accelerator=extract["accelerator"],
                                 progress=extract["progress"])
        cache.save(path, feats)
    if not np.array_equal(feats.labels, table.labels):
        raise RuntimeError(f"feature cache {path} holds labels that differ from split {table.name}; delete it")
    return feats, cached


def _compute_and_log(feats: Features, table: SampleTable, names: list[str], device: str | None,
                     options: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Compute the scores, log ``score/<name>``, ``time/<name>_s`` and the extra numbers some scores report
    (``score_extra/<name>/<key>``: the sample size and seed of subsampling scores, N-LEEP's spread over seeds);
    log fallbacks as warnings.txt.

    When one score fails, the others are still computed and logged, then the run fails naming the failures.
    """
    from medxfer.scores import ScoreError

    out = compute_isolated(feats.features, table.labels, feats.probs if feats.has_probs else None, names,
                           device=device, options=options)
    retry_locked(mlflow.log_metrics, {f"score/{k}": v for k, v in out.values.items()})
    retry_locked(mlflow.log_metrics, {f"time/{k}_s": float(v) for k, v in out.timings.items()})
    extra_metrics = {f"score_extra/{name}/{key}": v for name, got in out.extras.items() for key, v in got.items()}
    if extra_metrics:
        retry_locked(mlflow.log_metrics, extra_metrics)
    if out.notes:
        retry_locked(mlflow.log_text, "\n".join(out.notes) + "\n", "warnings.txt")
        retry_locked(mlflow.set_tag, "score_warnings", str(len(out.notes)))
        for note in out.notes:
            log.warning("%s", note)
    if out.failures:
        raise ScoreError("scores failed on split " + table.name + ": "
                         + "; ".join(f"{k}: {v}" for k, v in out.failures.items()))
    return out.values
