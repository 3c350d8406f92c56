"""``medxfer-analyze reference=<name>``: a published study's own figure, with the intervals and the noise ceiling
its published accuracies allow (:mod:`medxfer.analysis.parametric`); reads the tables shipped with medxfer, no
tracking store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medxfer.analysis.correlation import correlate
from medxfer.analysis.figures import correlation_figures, save_figure, save_figures, tau_ceiling_figure, tau_heatmap
from medxfer.analysis.parametric import published_tables
from medxfer.published import read_reference


@dataclass
class ReferenceResult:
    """The tables of a reference analysis (as written to ``figures_dir``) and the figure files."""

    reliability: pd.DataFrame
    intervals: pd.DataFrame
    accuracy: pd.DataFrame
    correlations: pd.DataFrame
    figures: list[Path] = field(default_factory=list)


def reference_dir_for(c: dict, name: str) -> Path:
    """Where a reference analysis writes: ``<paths.output_dir>/analysis/reference_<name>``."""
    return Path(c["paths"]["output_dir"]) / "analysis" / f"reference_{name}"


def _accuracy_lines(accuracy: pd.DataFrame) -> str:
    lines = []
    for dataset, g in accuracy.groupby("dataset", sort=True):
        lines.append(f"  {dataset}:")
        for row in g.sort_values("accuracy", ascending=False).itertuples(index=False):
            lines.append(f"    {row.model:<24} {row.accuracy:.3f}  [{row.acc_lo:.3f}, {row.acc_hi:.3f}]")
    return "\n".join(lines)


def _tau_table(intervals: pd.DataFrame, reliability: pd.DataFrame) -> str:
    cell = intervals.assign(text=[f"{t:+.2f} [{lo:+.2f},{hi:+.2f}]{'' if v != 'indistinguishable from random' else '~'}"
                                  for t, lo, hi, v in zip(intervals["tau"], intervals["tau2_lo"], intervals["tau2_hi"],
                                                          intervals["verdict"])])
    wide = cell.pivot(index="dataset", columns="score", values="text")
    order = sorted(set(wide.index) - {"ALL"}) + (["ALL"] if "ALL" in wide.index else [])
    ceil = reliability.set_index("dataset")
    wide["ceiling"] = [f"{ceil.loc[d, 'ceiling']:.2f} [{ceil.loc[d, 'ceiling_lo']:.2f},{ceil.loc[d, 'ceiling_hi']:.2f}]"
                       for d in wide.index]
    return wide.loc[order].T.to_string()


def run_reference(cfg: DictConfig) -> ReferenceResult:
    """Read the reference table ``cfg.reference``, correlate every score with the published accuracies, and
    measure what the test sets' size allows: accuracy intervals, the ceiling and its band, two-level tau
    intervals (``bootstrap.n`` draws, ``bootstrap.seed``); print them, write CSV tables and figures."""
    c = OmegaConf.to_container(cfg, resolve=True)
    name = str(c["reference"])
    ref = read_reference(name)
    boot = c["bootstrap"]
    reliability, intervals, accuracy = published_tables(ref.table, ref.class_counts, n_boot=boot["n"], seed=boot["seed"])
    corr = correlate(ref.table, n_boot=boot["n"], seed=boot["seed"])
    out = reference_dir_for(c, name)
    out.mkdir(parents=True, exist_ok=True)
    for frame, stem in ((reliability, "reliability"), (intervals, "tau_intervals"), (accuracy, "accuracy_intervals"),
                        (corr, "correlations")):
        frame.to_csv(out / f"{stem}.csv", index=False)
    scores = sorted(ref.table["score"].unique())
    title = f"{name}: published scores vs published test balanced accuracy"
    ceil = reliability.set_index("dataset")["ceiling"]
    notes = {(row.dataset, row.score): f"[{row.tau2_lo:.2f}, {row.tau2_hi:.2f}]; ceiling {ceil[row.dataset]:.2f}"
             for row in intervals.itertuples(index=False)}
    figures = save_figures(correlation_figures(ref.table, corr, title=f"{title} (bars: accuracy intervals; τ [two-level "
                                               "interval]; ceiling: the τ of a perfect score)",
                                               target_label="test bal. acc.", scores=scores, errors=accuracy,
                                               notes=notes), out / "figure3")
    figures += save_figure(tau_ceiling_figure(intervals, reliability, title=title, scores=scores), out / "tau_ceiling")
    figures += save_figure(tau_heatmap(intervals, title=title, scores=scores), out / "tau_heatmap")

    counts = "; ".join(f"{d} {'/'.join(map(str, n))} ({ref.splits[d].parent.name}/test.csv)"
                       for d, n in sorted(ref.class_counts.items()))
    print(f"[analyze] reference {name}: {ref.table['model'].nunique()} models x {len(ref.class_counts)} datasets; "
          f"test samples per class: {counts}", flush=True)
    print("[analyze] published test balanced accuracy [95 % interval from the test-set size: per-class binomial "
          f"draws, {boot['n']} resamples]:\n" + _accuracy_lines(accuracy), flush=True)
    rel = reliability.copy()
    print("[analyze] ceiling (mean tau-b between the published ranking and a re-measured one: the tau a perfect "
          "score can expect) [95 % band], and retest tau (two re-measurements):\n"
          + rel.round(3).to_string(index=False), flush=True)
    print("[analyze] tau of each score [two-level 95 % interval: models and test-set noise]; ~ = interval covers 0 "
          "(indistinguishable from random):\n" + _tau_table(intervals, reliability), flush=True)
    return ReferenceResult(reliability, intervals, accuracy, corr, figures)
