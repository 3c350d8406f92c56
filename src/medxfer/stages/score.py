"""The score stage: transferability scores of one (model, dataset) cell, one MLflow run per split.

Order of work, so that a bad setup fails before anything expensive: splits and score options checked
(:func:`medxfer.plans.score_settings`) → tracking store reachable → the plan (:func:`medxfer.plans.score_plan`:
weights resolved and fetched on first use, data read and split, the cells) → finished cells skipped → model built →
features (cache or forward pass) → scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medxfer import tracking
from medxfer.data.datasets import check_scoreable
from medxfer.data.decoded import decoded_cache_for
from medxfer.data.tables import SampleTable
from medxfer.models.extract import FeatureCache, Features
from medxfer.models.features import split_features
from medxfer.models.zoo import ModelSpec, model_tags
from medxfer.plans import ScorePlan, Sources, model_and_preprocess, score_plan, score_settings
from medxfer.progress import cell_position
from medxfer.scores.isolated import compute_isolated, single_thread
from medxfer.scores.registry import split_applicable

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    """What one split of a score cell produced: the run id and its score values (None when skipped)."""

    split: str
    run_id: str | None
    scores: dict[str, float] | None
    skipped: bool
    cached_features: bool = False
    cell: str | None = None


def run_score(cfg: DictConfig, overrides: list[str] | None = None, *, use_cache: bool = True,
              sources: Sources | None = None) -> list[CellResult]:
    """Score one (model, dataset) cell on each split in ``cfg.splits``; returns one result per split.

    ``use_cache=False`` runs the forward pass even when the feature cache holds the split (a reproduction).
    ``sources``: datasets and weights already read by this process (a study's cells share them)."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    settings = score_settings(c)
    tracking.setup_tracking(c["tracking"]["uri"])
    experiment_id = tracking.ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    tracking.reap_dead_runs(experiment_id)
    plan = score_plan(c, sources or Sources(c["paths"]["cache_dir"]), settings)
    return run_score_plan(plan, experiment_id, overrides, use_cache=use_cache)


def run_score_plan(plan: ScorePlan, experiment_id: str, overrides: list[str] | None = None, *,
                   use_cache: bool = True) -> list[CellResult]:
    """Run a score plan in the experiment ``experiment_id``: its finished cells are skipped, the others scored."""
    c, spec, cells, tables, names, options = plan.config, plan.spec, plan.cells, plan.tables, plan.names, plan.options
    model_name, dataset_name = c["model"]["name"], c["dataset"]["name"]
    label = f"[score{cell_position()}] {model_name}@{dataset_name}"  # "[score 3/42]" inside the study
    for split in plan.absent:
        print(f"{label}: the dataset has no out-of-distribution set; skipping split {split}", flush=True)
    done = {} if c["force"] else tracking.finished_runs_of(experiment_id, [cell.id for cell in cells.values()])
    results = [CellResult(split, done[cell.id].info.run_id, None, skipped=True, cell=cell.id)
               for split, cell in cells.items() if cell.id in done]
    todo = [split for split, cell in cells.items() if cell.id not in done]
    if len(todo) < len(cells):  # a fresh cell says so in its "starting" lines; one line fewer per cell in a log
        print(f"{label}: {len(cells) - len(todo)} of {len(cells)} split(s) done, {len(todo)} to do", flush=True)
    if not todo:
        return results

    applicable, not_applicable = split_applicable(names, has_source_head=spec.head_size > 0, options=options)
    if not applicable:  # only inapplicable scores were asked for: computing them fails in the run, saying why
        applicable, not_applicable = names, []
    for split in todo:
        check_scoreable(tables[split])
    model, preprocess = model_and_preprocess(spec, plan.weights, c["preprocess"], dataset_name)
    cache = FeatureCache(c["paths"]["cache_dir"] + "/features") if use_cache else None
    decoded = decoded_cache_for(c["extract"], c["paths"]["cache_dir"]) if use_cache else None
    extra = {"weights_source": plan.weights.kind, **model_tags(spec, dataset_name), **plan.data.run_tags(),
             **({"scores_not_applicable": ",".join(not_applicable)} if not_applicable else {})}

    for split in todo:
        cell, table = cells[split], tables[split]
        tags = cell.tags(c["study"], extra=extra, user=c.get("tags"))
        t_cell = time.perf_counter()
        try:
            values, cached, run_id = _score_split(experiment_id, cell, tags, c, overrides, model, spec, table,
                                                  plan.data, preprocess, cache, applicable, options, label, decoded)
        except tracking.CellClaimed as err:  # another process has this split
            print(f"{label}/{split}: {err}", flush=True)
            results.append(CellResult(split, None, None, skipped=True, cell=cell.id))
            continue
        results.append(CellResult(split, run_id, values, skipped=False, cached_features=cached, cell=cell.id))
        print(f"{label}/{split}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
              + f" in {time.perf_counter() - t_cell:.1f}s", flush=True)
    return results


def _score_split(experiment_id: str, cell: Any, tags: dict[str, str], c: dict[str, Any], overrides: list[str] | None,
                 model: Any, spec: ModelSpec, table: SampleTable, data: Any, preprocess: Any,
                 cache: FeatureCache | None, names: list[str], options: dict[str, dict[str, Any]],
                 label: str, decoded: Any = None) -> tuple[dict[str, float], bool, str]:
    """One split's run: claimed, features, scores. Returns ``(values, features_came_from_the_cache, run_id)``."""
    with tracking.cell_run(experiment_id, run_name=cell.run_name, tags=tags, config=c, overrides=overrides,
                           claim=True) as run:
        print(f"{label}/{cell.split}: starting ({len(table)} images)", flush=True)
        tracking.log_dict({"class_names": list(data.class_names), "label_mapping": data.label_mapping,
                           "class_counts": table.class_counts()}, "labels.json")
        root = (c["dataset"].get("ood") or {}).get("root") if cell.split == "ood" else c["dataset"].get("root")
        tracking.log_input(table.name, cell.data_digest, str(root or table.name), len(table), table.class_counts(),
                           "training" if cell.split == "train" else "ood")
        t0 = time.perf_counter()
        feats, cached = split_features(model, spec, cell.weights_id, table, cell.data_digest, c["dataset"]["name"],
                                       cell.split, preprocess, cache, c["extract"], decoded=decoded)
        tracking.log_metrics({"time/extract_s": time.perf_counter() - t0})
        tracking.log_params({"n_samples": len(table), "feat_dim": feats.features.shape[1],
                             "n_classes": int(len(np.unique(table.labels))), "features_cached": cached,
                             "preprocess": str(preprocess.as_dict()), "source_head_size": spec.head_size})
        with single_thread(bool(c["score"].get("deterministic", True))):
            values = _compute_and_log(feats, table, names, c["score"].get("device"), options)
        return values, cached, run.info.run_id


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
    tracking.log_metrics({f"score/{k}": v for k, v in out.values.items()})
    tracking.log_metrics({f"time/{k}_s": float(v) for k, v in out.timings.items()})
    extra_metrics = {f"score_extra/{name}/{key}": v for name, got in out.extras.items() for key, v in got.items()}
    tracking.log_metrics(extra_metrics)
    if out.notes:
        tracking.log_text("\n".join(out.notes) + "\n", "warnings.txt")
        tracking.set_tags({"score_warnings": str(len(out.notes))})
        for note in out.notes:
            log.warning("%s", note)
    if out.failures:
        raise ScoreError("scores failed on split " + table.name + ": "
                         + "; ".join(f"{k}: {v}" for k, v in out.failures.items()))
    return out.values
