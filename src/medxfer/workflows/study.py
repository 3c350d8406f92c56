"""The study: every stage over every (model, dataset) cell, in one process, resumable.

Each stage's config is composed exactly as its own command would compose it (:mod:`medxfer.workflows.grid`), with
the study's ``study``, ``paths``, ``tracking`` and ``force`` passed down, so any cell can be rerun alone with
``medxfer-score`` or ``medxfer-finetune`` and the same overrides. The analysis receives the study's manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from medxfer.progress import StageClock, counting
from medxfer.workflows.grid import StudyGrid
from medxfer.workflows.search import run_halving


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
    cells = study.pairs

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
        if study.search.kind == "halving":
            report.counts["finetune"] = _halving_stage(study, sources, run_finetune)
        else:
            report.counts["finetune"] = _grid_stage(study, sources, run_finetune)
        report.seconds["finetune"] = time.perf_counter() - t0

    if c["analyze"]["enabled"]:
        t0 = time.perf_counter()
        print("[study] stage analyze", flush=True)
        report.outputs["analysis"] = run_analyze(study.analyze_config(), study.manifest)
        report.seconds["analyze"] = time.perf_counter() - t0
    return report


def _grid_stage(study: StudyGrid, sources: Any, run_finetune: Callable[..., Any]) -> dict[str, int]:
    """Every listed Halton point at every seed, to the full budget."""
    trials, ft = study.trials, study.search
    print(f"[study] stage finetune ({study.protocol_title()}): {len(trials)} trials ({len(study.pairs)} cells x "
          f"{len(ft.points)} Halton points x {len(ft.seeds)} seed(s))", flush=True)
    done = ran = 0
    clock = StageClock(len(trials))
    for i, (m, d, t, seed) in enumerate(trials, 1):
        started = time.perf_counter()
        with counting(i, len(trials), clock.left_s()):
            result = run_finetune(study.trial_config(m, d, t, seed), sources=sources,
                                  tags=study.protocol_tags(m, d))
        clock.record(time.perf_counter() - started, not result.skipped)
        done += result.skipped
        ran += not result.skipped
    return {"skipped": done, "ran": ran}


def _halving_stage(study: StudyGrid, sources: Any, run_finetune: Callable[..., Any]) -> dict[str, int]:
    """Per (model, dataset), the halving search at the first seed, then its selected point at the other seeds."""
    from medxfer.training.checkpoints import TrialCheckpoints

    ft = study.search
    print(f"[study] stage finetune ({study.protocol_title()}): {len(study.pairs)} searches", flush=True)
    counts = {"skipped": 0, "ran": 0}

    def train(config: Any, tags: dict[str, str]) -> Any:
        result = run_finetune(config, sources=sources, tags=tags)
        counts["skipped" if result.skipped else "ran"] += 1
        return result

    def discard(folder: str) -> None:
        TrialCheckpoints(Path(folder).parent, Path(folder).name).discard()

    for i, (m, d) in enumerate(study.pairs, 1):
        h = study.halving(m, d)

        def rung(point: int, r: int, m: str = m, d: str = d) -> tuple[Any, str | None]:
            result = train(study.rung_config(m, d, point, r, ft.seeds[0]), study.protocol_tags(m, d, r))
            return (result.metrics if result.run_id else None), result.checkpoints

        with counting(i, len(study.pairs), None):
            state = run_halving(h, rung, discard=discard, label=f"{m}@{d}")
            for seed in ft.seeds[1:]:  # replicates of the selected point
                train(study.rung_config(m, d, state.selected, h.rungs - 1, seed),
                      study.protocol_tags(m, d, h.rungs - 1))
    return counts


def analyze_study(cfg: DictConfig, overrides: list[str] | None = None) -> Any:
    """``medxfer-analyze``: the analysis stage on the composed analyze config ``cfg``, given the manifest of its
    grid (built only when the study has runs; not at all with ``legacy=true``)."""
    from medxfer.stages.analyze import run_analyze

    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return run_analyze(cfg, lambda: StudyGrid(c).manifest(), overrides)
