"""The study: every stage over every (model, dataset) cell, in one process, resumable.

Each stage's config is composed exactly as its own command would compose it, with the study's ``study``,
``paths``, ``tracking`` and ``force`` passed down, so any cell can be rerun alone with ``medxfer-score`` or
``medxfer-finetune`` and the same overrides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medxfer.stages.compose import compose_stage


@dataclass
class StudyReport:
    """Counts per stage and where the results are."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def _common(c: dict[str, Any]) -> list[str]:
    return [
        f"study={c['study']}",
        f"force={str(c['force']).lower()}",
        f"paths.root_dir={c['paths']['root_dir']}",
        f"paths.data_dir={c['paths']['data_dir']}",
        f"paths.cache_dir={c['paths']['cache_dir']}",
        f"paths.output_dir={c['paths']['output_dir']}",
        f"tracking.uri={c['tracking']['uri']}",
        # a None written as "None" would reach the stages as the string 'None'
        f"tracking.artifact_root={'null' if c['tracking']['artifact_root'] is None else c['tracking']['artifact_root']}",
    ]


def run_study(cfg: DictConfig) -> StudyReport:
    """Run the score stage (and the fine-tune and analysis stages when enabled) over the study's grid."""
    from medxfer.stages.analyze import run_analyze
    from medxfer.stages.finetune import run_finetune
    from medxfer.stages.score import run_score

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    report = StudyReport()
    cells = [(m, d) for d in c["datasets"] for m in c["models"]]
    common = _common(c)
    zoo = [f"zoo.allow_noncommercial={str(c['zoo']['allow_noncommercial']).lower()}"]

    t0 = time.perf_counter()
    done = ran = 0
    print(f"[study] stage score: {len(cells)} cells (models x datasets), each in and out of distribution", flush=True)
    for i, (m, d) in enumerate(cells, 1):
        results = run_score(compose_stage("score", [f"model={m}", f"dataset={d}", *common, *zoo, *c["score"]["overrides"]]))
        done += sum(r.skipped for r in results)
        ran += sum(not r.skipped for r in results)
        print(f"[study] score {i}/{len(cells)} cells", flush=True)
    report.counts["score"] = {"skipped": done, "ran": ran}
    report.seconds["score"] = time.perf_counter() - t0

    if c["finetune"]["enabled"]:
        t0 = time.perf_counter()
        trials = [(m, d, t) for (m, d) in cells for t in c["finetune"]["trials"]]
        print(f"[study] stage finetune: {len(trials)} trials ({len(cells)} cells x {len(c['finetune']['trials'])} Halton points)", flush=True)
        done = ran = 0
        for i, (m, d, t) in enumerate(trials, 1):
            result = run_finetune(compose_stage(
                "finetune", [f"model={m}", f"dataset={d}", f"trial={t}", *common, *zoo, *c["finetune"]["overrides"]]
            ))
            skipped = result.skipped
            done += skipped
            ran += not skipped
            print(f"[study] finetune {i}/{len(trials)} trials", flush=True)
        report.counts["finetune"] = {"skipped": done, "ran": ran}
        report.seconds["finetune"] = time.perf_counter() - t0

    if c["analyze"]["enabled"]:
        t0 = time.perf_counter()
        print("[study] stage analyze", flush=True)
        report.outputs["analysis"] = run_analyze(compose_stage("analyze", [*common, *c["analyze"]["overrides"]]))
        report.seconds["analyze"] = time.perf_counter() - t0
    return report
