"""The study: every stage over every (model, dataset) cell, in one process, resumable.

Each stage's config is composed exactly as its own command would compose it (:mod:`medxfer.workflows.grid`), with
the study's ``study``, ``paths``, ``tracking`` and ``force`` passed down, so any cell can be rerun alone with
``medxfer-score`` or ``medxfer-finetune`` and the same overrides. The analysis receives the study's manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medxfer.progress import StageClock, counting
from medxfer.workflows.grid import StudyGrid


@dataclass
class StudyReport:
    """Counts per stage and where the results are."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def run_study(cfg: DictConfig) -> StudyReport:
    """Run the score stage (and the fine-tune and analysis stages when enabled) over the study's grid."""
    from medxfer.stages.analyze import run_analyze
    from medxfer.stages.finetune import run_finetune
    from medxfer.stages.score import run_score

    from medxfer.plans import Sources

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    study = StudyGrid(c)  # composes each stage config once, for the stages and again for the manifest
    sources = Sources(c["paths"]["cache_dir"])  # each dataset read, each model's weights resolved, once
    report = StudyReport()
    cells, trials = study.pairs, study.trials

    t0 = time.perf_counter()
    done = ran = 0
    print(f"[study] stage score: {len(cells)} cells (models x datasets), each in and out of distribution", flush=True)
    clock = StageClock(len(cells))
    for i, (m, d) in enumerate(cells, 1):
        started = time.perf_counter()
        with counting(i, len(cells), clock.left_s()):  # the stage's lines say "[score i/n, ~t left]"
            results = run_score(study.score_config(m, d), sources=sources)
        done += sum(r.skipped for r in results)
        ran += sum(not r.skipped for r in results)
        clock.record(time.perf_counter() - started, any(not r.skipped for r in results))
    report.counts["score"] = {"skipped": done, "ran": ran}
    report.seconds["score"] = time.perf_counter() - t0

    if c["finetune"]["enabled"]:
        t0 = time.perf_counter()
        seeds = c["finetune"].get("seeds") or [0]
        print(f"[study] stage finetune: {len(trials)} trials ({len(cells)} cells x {len(c['finetune']['trials'])} "
              f"Halton points x {len(seeds)} seed(s))", flush=True)
        done = ran = 0
        clock = StageClock(len(trials))
        for i, (m, d, t, seed) in enumerate(trials, 1):
            started = time.perf_counter()
            with counting(i, len(trials), clock.left_s()):
                result = run_finetune(study.trial_config(m, d, t, seed), sources=sources)
            skipped = result.skipped
            clock.record(time.perf_counter() - started, not skipped)
            done += skipped
            ran += not skipped
        report.counts["finetune"] = {"skipped": done, "ran": ran}
        report.seconds["finetune"] = time.perf_counter() - t0

    if c["analyze"]["enabled"]:
        t0 = time.perf_counter()
        print("[study] stage analyze", flush=True)
        report.outputs["analysis"] = run_analyze(study.analyze_config(), study.manifest)
        report.seconds["analyze"] = time.perf_counter() - t0
    return report


def analyze_study(cfg: DictConfig, overrides: list[str] | None = None) -> Any:
    """``medxfer-analyze``: the analysis stage on the composed analyze config ``cfg``, given the manifest of its
    grid (built only when the study has runs; not at all with ``legacy=true``)."""
    from medxfer.stages.analyze import run_analyze

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return run_analyze(cfg, lambda: StudyGrid(c).manifest(), overrides)
