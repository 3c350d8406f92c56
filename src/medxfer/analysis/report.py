"""The analysis run's description: what the MLflow UI shows on the run page (the run note, rendered as markdown).

It answers the study's question on the page: which scores ranked the models like their fine-tuned accuracy, how
sure that is (intervals, the ground truth's ceiling), on which models and data, with links to the figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def _cell(tau: float, lo: float, hi: float) -> str:
    if tau is None or not math.isfinite(tau):
        return "n/a"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{tau:.2f}"
    return f"{tau:.2f} [{lo:.2f}, {hi:.2f}]"


def describe_study(study: str, models: list[str], datasets: list[str], corr: pd.DataFrame,
                   reliability: pd.DataFrame | None, figures: list[str | Path], *, n_best: int = 8,
                   synthetic: bool = False) -> str:
    """Markdown for the analysis run of ``study``: the models and datasets, the ``n_best`` scores by pooled tau
    with their 95 % intervals per dataset, each dataset's ceiling where the ground truth's reliability is known,
    and links to the figure artifacts."""
    lines = [f"## Study `{study}`: transferability scores vs fine-tuned balanced accuracy", ""]
    if synthetic:
        lines += ["Data: **the synthetic benchmark** (generated images, not medical data): the numbers say how the "
                  "scores behave on it, nothing clinical.", ""]
    lines += [f"**{len(models)} models**: {', '.join(f'`{m}`' for m in models)}  ",
              f"**{len(datasets)} datasets**: {', '.join(f'`{d}`' for d in datasets)}", ""]
    pooled = corr[corr["dataset"] == "ALL"].sort_values("tau", ascending=False, na_position="last")
    best = list(pooled["score"].head(n_best))
    columns = [d for d in datasets if d in set(corr["dataset"])] + ["ALL"]
    lines += ["Kendall tau-b of each score with test balanced accuracy [95 % bootstrap interval over models], the "
              f"{len(best)} best by the pooled tau (`ALL`):", "",
              "| score | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    by = corr.set_index(["score", "dataset"])
    for score in best:
        cells = []
        for d in columns:
            row = by.loc[(score, d)] if (score, d) in by.index else None
            cells.append("-" if row is None else _cell(row["tau"], row.get("tau_lo"), row.get("tau_hi")))
        lines.append(f"| `{score}` | " + " | ".join(cells) + " |")
    lines.append("")
    if reliability is not None and len(reliability) and "ceiling" in reliability.columns:
        ceilings = ", ".join(f"`{r['dataset']}` {r['ceiling']:.2f}" for _, r in reliability.iterrows()
                             if pd.notna(r["ceiling"]))
        lines += [f"**Ceiling** (the tau a perfect score could expect against this noisy ground truth): {ceilings}.", ""]
    else:
        lines += ["The ground truth's ceiling is unknown (no per-sample predictions in the fine-tune runs).", ""]
    covered = [s for s in best if (s, "ALL") in by.index and pd.notna(by.loc[(s, "ALL")].get("tau_lo"))
               and by.loc[(s, "ALL")]["tau_lo"] <= 0]
    if covered:
        lines += [f"Pooled intervals that cover 0 (indistinguishable from a random ranking): "
                  f"{', '.join(f'`{s}`' for s in covered)}.", ""]
    if figures:
        lines += ["Figures: " + ", ".join(f"[{Path(f).name}](#/artifacts/figures/{Path(f).name})" for f in figures), ""]
    lines.append("Tables: `tables/correlations_iid.csv` (every score), `tables/reliability.csv`, `tables/tau_intervals.csv`.")
    return "\n".join(lines)
