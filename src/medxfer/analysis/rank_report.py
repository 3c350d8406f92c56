"""The report of a ranking, for a reader who must decide which models to fine-tune: ``report.md`` and a figure of
each model's rank with its interval, written into one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def rank_figure(table: pd.DataFrame, ranker: str, path: Path) -> Path:
    """Each model (best at the top) at its rank, with a bar from the best to the worst rank of its interval;
    shortlisted models drawn filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = table.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(t) + 1.2))
    for y, (_, r) in enumerate(t.iterrows()):
        if pd.notna(r["rank_lo"]) and pd.notna(r["rank_hi"]):
            ax.plot([r["rank_lo"], r["rank_hi"]], [y, y], color="0.55", lw=2.5, solid_capstyle="round")
        ax.plot([r["rank"]], [y], "o", color="C0", mfc="C0" if r["shortlist"] else "white", ms=8)
    ax.set_yticks(range(len(t)), [str(m) for m in t["model"]])
    ax.set_xlabel(f"rank by {ranker} (1 = best); bar: 95% interval over draws of your images")
    ax.set_xlim(0.5, max(float(t["rank_hi"].max() if t["rank_hi"].notna().any() else 1), float(t["rank"].max())) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.invert_xaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("filled: the shortlist to fine-tune", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_words(draw: str) -> str:
    """How the images were drawn for the rank intervals, in words."""
    if draw == "bootstrap":
        return "each class to its size, with replacement"
    return "a random half of each class, without replacement"


def write_report(result: Any, folder: Path) -> Path:
    """``folder/report.md`` and ``folder/rank_intervals.png`` for a :class:`medxfer.stages.rank.RankResult`;
    returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    figure = rank_figure(result.table, result.ranker, folder / "rank_intervals.png")
    d = result.decision()
    ev = result.evidence
    lines = [f"# Which model to fine-tune for `{result.dataset}`", "",
             f"{result.n_samples} training images in {result.n_classes} classes; {len(result.table)} models ranked by "
             f"**{result.ranker}** ({result.why}).", "",
             f"**Fine-tune these {len(result.shortlist)}:** {', '.join(f'`{m}`' for m in result.shortlist)}.", ""]
    if ev is not None:
        lines += ["## The evidence", "",
                  f"- Source: {result.evidence_source}.",
                  f"- Kendall tau-b of {result.ranker} with balanced accuracy after fine-tuning: **{ev.interval()}** "
                  f"(95 % interval over models), pooled over {ev.n_datasets} dataset(s) x {ev.n_models} model(s)."]
        if result.ceiling is not None:
            lines.append(f"- Ceiling (the tau a perfect score could expect against that noisy ground truth): "
                         f"{result.ceiling:.2f}.")
        if ev.hit_rate is not None:
            lines.append(f"- Its top pick was the best model on {ev.hit_rate:.0%} of the study's datasets; expected "
                         f"regret of the top pick: {ev.regret:.3f} balanced accuracy; the best model was always "
                         f"within its top {ev.best_within}.")
        lines.append("")
    else:
        lines += ["## The evidence", "", f"None under these settings ({result.evidence_source}): nothing says this "
                  "ranking predicts fine-tuned accuracy.", ""]
    lines += ["## The ranking", "",
              f"Rank interval: the 95 % range of each model's rank over draws of your images "
              f"({draw_words(result.draw)}); P(first): the share of draws in which it ranks first.", "",
              f"| rank | model | {result.ranker} | rank interval | P(first) | fine-tune |", "|---:|---|---:|---:|---:|---|"]
    for m in d["models"]:
        interval = "-" if m["rank_lo"] is None else f"{m['rank_lo']:.0f}-{m['rank_hi']:.0f}"
        p = "-" if m["p_top"] is None else f"{m['p_top']:.2f}"
        value = "-" if m["value"] is None else f"{m['value']:.6g}"
        rank = "-" if m["rank"] is None else f"{m['rank']:.0f}"
        lines.append(f"| {rank} | `{m['model']}` | {value} | {interval} | {p} | {'yes' if m['shortlist'] else ''} |")
    lines += ["", f"![rank intervals]({figure.name})", ""]
    if result.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    lines += [f"MLflow run `{result.run_id}` in experiment `{result.experiment}`.", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
