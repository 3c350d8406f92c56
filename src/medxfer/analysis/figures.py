"""Figures in the style of the paper's Figure 3: rows are datasets, columns scores, one marker per model (with
its accuracy interval as an error bar where the study has per-sample predictions), a least-squares line,
Kendall's tau in each panel, the legend naming the models outside the panels; at most ``max_columns`` scores per
figure. And a heatmap of tau intervals (datasets x scores) with the ground truth's ceiling as its own column,
and each score's tau interval against the ceiling's band."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medxfer.analysis.correlation import comparable

MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p"]


MAX_COLUMNS = 8


def correlation_figures(table: pd.DataFrame, corr: pd.DataFrame, *, title: str, target_label: str,
                        scores: list[str] | None = None, errors: pd.DataFrame | None = None,
                        max_columns: int = MAX_COLUMNS, notes: dict | None = None) -> list[Figure]:
    """:func:`correlation_figure` for the scores in chunks of at most ``max_columns`` (one figure each, titled
    "(part i/n)" when there are several)."""
    scores = list(scores) if scores is not None else sorted(table["score"].unique())
    if max_columns < 1:
        raise ValueError(f"max_columns={max_columns}; expected at least 1")
    chunks = [scores[i:i + max_columns] for i in range(0, len(scores), max_columns)] or [[]]
    return [correlation_figure(table, corr, title=title if len(chunks) == 1 else f"{title} (part {i + 1}/{len(chunks)})",
                               target_label=target_label, scores=chunk, errors=errors, notes=notes)
            for i, chunk in enumerate(chunks)]


def correlation_figure(table: pd.DataFrame, corr: pd.DataFrame, *, title: str, target_label: str,
                       scores: list[str] | None = None, errors: pd.DataFrame | None = None,
                       notes: dict | None = None) -> Figure:
    """One panel per (dataset, score): score value (x) against ``target`` (y) for every model.

    Args:
        table: long table ``dataset, model, score, value, target`` (what :func:`correlate` took).
        corr: the output of :func:`correlate` for it (tau per dataset and score is printed in each panel).
        scores: the columns, in order (None: every score of the table, sorted); e.g. ensembles after the scores.
        errors: accuracy intervals ``dataset, model, acc_lo, acc_hi`` (e.g. from
            :func:`medxfer.analysis.reliability.reliability_tables`), drawn as vertical error bars; models
            without a row get none.
        notes: (dataset, score) -> text printed under tau in that panel (e.g. its interval and the ceiling).
    """
    if len(table) == 0:
        raise ValueError(f"no data to plot for {title!r}")
    datasets = sorted(table["dataset"].unique())
    scores = list(scores) if scores is not None else sorted(table["score"].unique())
    models = sorted(table["model"].unique())
    cmap = matplotlib.colormaps["tab10"]
    style = {m: (MARKERS[i % len(MARKERS)], cmap(i % 10)) for i, m in enumerate(models)}
    tau = corr.set_index(["dataset", "score"])["tau"]
    bars = {} if errors is None else {(d, m): (lo, hi) for d, m, lo, hi in
                                      errors[["dataset", "model", "acc_lo", "acc_hi"]].itertuples(index=False)}
    # a bare Figure (no pyplot): no backend or display needed, and notebooks still render it inline
    fig = Figure(figsize=(2.3 * len(scores) + 1.5, 2.2 * len(datasets) + 0.6))
    axes = fig.subplots(len(datasets), len(scores), squeeze=False)
    for r, dataset in enumerate(datasets):
        for k, score in enumerate(scores):
            ax = axes[r, k]
            g = table[(table["dataset"] == dataset) & (table["score"] == score)]
            _error_bars(ax, g, dataset, bars, style)
            for model, x, y in zip(g["model"], g["value"], g["target"]):
                marker, color = style[model]
                ax.scatter(x, y, marker=marker, color=color, s=28)
            if len(g) >= 2 and np.ptp(comparable(g["value"])) > 0:  # not for last-bit noise (H-Score, N <= D)
                x = g["value"].to_numpy(float)
                centre, spread = x.mean(), x.std()
                # fit on standardised x: scores such as H-Score span tiny ranges far from 0
                slope, intercept = np.polyfit((x - centre) / spread, g["target"].to_numpy(float), 1)
                xs = np.linspace(x.min(), x.max(), 20)
                ax.plot(xs, slope * (xs - centre) / spread + intercept, color="0.4", lw=1, ls="--")
            t = tau.get((dataset, score), np.nan)
            note = (notes or {}).get((dataset, score))
            ax.text(0.04, 0.93, f"τ = {t:.2f}" + (f"\n{note}" if note else ""), transform=ax.transAxes, va="top", fontsize=9,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8"))
            ax.tick_params(labelsize=7)
            ax.xaxis.get_offset_text().set_fontsize(7)
            if r == 0:
                ax.set_title(score, fontsize=10)
            if k == 0:
                ax.set_ylabel(f"{dataset}\n{target_label}", fontsize=8)
    handles = [Line2D([], [], marker=style[m][0], color=style[m][1], ls="", label=m) for m in models]
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    # outside the panels, on the right; save_figure's tight bounding box keeps it in the file
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 + len(models) // 25,
               fontsize=8, frameon=False, title="model" + (" (bars: accuracy interval)" if bars else ""),
               title_fontsize=8)
    return fig


def _error_bars(ax, g: pd.DataFrame, dataset: str, bars: dict, style: dict) -> None:
    """Each model's accuracy interval as a vertical bar with caps, one collection per panel: an ``errorbar``
    call per model made drawing a study's figures take seconds. An interval that misses the point (a mean of
    seeds outside the pooled bootstrap's interval) is drawn to the point."""
    rows = [(x, y, *bars[(dataset, m)], style[m][1]) for m, x, y in zip(g["model"], g["value"], g["target"])
            if (dataset, m) in bars]
    if not rows:
        return
    x, y, lo, hi = (np.array([r[i] for r in rows], dtype=float) for i in range(4))
    colors = [r[4] for r in rows]
    bottom, top = np.minimum(lo, y), np.maximum(hi, y)
    ax.vlines(x, bottom, top, colors=colors, linewidth=0.8, alpha=0.8)
    ax.scatter(np.concatenate([x, x]), np.concatenate([bottom, top]), marker="_", c=colors + colors, s=16,
               linewidths=0.8, alpha=0.8)


def tau_heatmap(intervals: pd.DataFrame, *, title: str, scores: list[str] | None = None) -> Figure:
    """Datasets (rows, ``ALL`` last) x scores (columns, then ``ceiling``): the colour is tau, each cell says
    tau and its two-level interval; grey text marks an interval that covers 0 (indistinguishable from random).

    Args:
        intervals: :func:`medxfer.analysis.reliability.reliability_tables`' interval table (``dataset, score,
            tau, tau2_lo, tau2_hi, ceiling, verdict``).
        scores: the score columns, in order (None: sorted).
    """
    from medxfer.analysis.reliability import RANDOM

    if len(intervals) == 0:
        raise ValueError(f"no tau intervals to draw for {title!r}")
    scores = list(scores) if scores is not None else sorted(intervals["score"].unique())
    datasets = sorted(set(intervals["dataset"]) - {"ALL"}) + (["ALL"] if "ALL" in set(intervals["dataset"]) else [])
    cells = intervals.set_index(["dataset", "score"])
    ceilings = intervals.drop_duplicates("dataset").set_index("dataset")["ceiling"]
    columns = scores + ["ceiling"]
    grid = np.full((len(datasets), len(columns)), np.nan)
    fig = Figure(figsize=(1.25 * len(columns) + 2.2, 0.75 * len(datasets) + 1.6))
    ax = fig.subplots()
    for r, dataset in enumerate(datasets):
        for k, score in enumerate(columns):
            if score == "ceiling":
                value = ceilings.get(dataset, np.nan)
                text, colour = f"{value:.2f}", "black"
            elif (dataset, score) in cells.index:
                row = cells.loc[(dataset, score)]
                value = row["tau"]
                text = f"{value:.2f}\n[{row['tau2_lo']:.2f}, {row['tau2_hi']:.2f}]"
                colour = "0.45" if row["verdict"] == RANDOM else "black"
            else:
                continue
            grid[r, k] = value
            ax.text(k, r, text, ha="center", va="center", fontsize=7, color=colour)
    image = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.axvline(len(scores) - 0.5, color="black", lw=1.5)
    ax.set_xticks(range(len(columns)), [*scores, "ceiling\n(perfect score)"], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
    fig.colorbar(image, ax=ax, label="Kendall τ", shrink=0.8)
    ax.set_title(f"{title}\nτ [two-level 95 % interval]; grey: interval covers 0 (indistinguishable from random)",
                 fontsize=9)
    return fig


def tau_ceiling_figure(intervals: pd.DataFrame, reliability: pd.DataFrame, *, title: str,
                       scores: list[str] | None = None) -> Figure:
    """One panel per dataset (``ALL`` last): each score's tau (point) with its two-level interval (bar) against
    the ceiling of the ground truth (line) and its band (shaded: the middle 95 % of the taus between the
    observed and the re-measured accuracy rankings); a dashed line at tau = 0. A score's bar reaching into the
    band is as good as this ground truth can tell.

    Args:
        intervals: ``dataset, score, tau, tau2_lo, tau2_hi, verdict`` (the interval table of
            :func:`medxfer.analysis.reliability.reliability_tables` or
            :func:`medxfer.analysis.parametric.published_tables`).
        reliability: ``dataset, ceiling, ceiling_lo, ceiling_hi`` per dataset.
        scores: the scores, in order (None: sorted).
    """
    from medxfer.analysis.reliability import RANDOM

    if len(intervals) == 0:
        raise ValueError(f"no tau intervals to draw for {title!r}")
    scores = list(scores) if scores is not None else sorted(intervals["score"].unique())
    datasets = sorted(set(intervals["dataset"]) - {"ALL"}) + (["ALL"] if "ALL" in set(intervals["dataset"]) else [])
    ceilings = reliability.set_index("dataset")
    fig = Figure(figsize=(0.45 * len(scores) * len(datasets) + 1.5 * len(datasets) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, dataset in zip(axes, datasets):
        if dataset in ceilings.index:
            c = ceilings.loc[dataset]
            ax.axhspan(c["ceiling_lo"], c["ceiling_hi"], color="tab:green", alpha=0.18, lw=0)
            ax.axhline(c["ceiling"], color="tab:green", lw=1.2, label="ceiling (perfect score)")
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        cells = intervals[intervals["dataset"] == dataset].set_index("score")
        for k, score in enumerate(scores):
            if score not in cells.index:
                continue
            row = cells.loc[score]
            colour = "0.55" if row["verdict"] == RANDOM else "tab:blue"
            ax.vlines(k, row["tau2_lo"], row["tau2_hi"], color=colour, lw=1.5)
            ax.scatter([k], [row["tau"]], color=colour, s=22, zorder=3)
        ax.set_xticks(range(len(scores)), scores, rotation=50, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(scores) - 0.4)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(dataset, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_ylabel("Kendall τ (score vs test bal. acc.)", fontsize=8)
    fig.suptitle(f"{title}\npoints: τ, bars: two-level 95 % interval (grey: covers 0); green: ceiling and its 95 % band",
                 fontsize=9)
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    # a tight bounding box: the legend outside the panels and rotated labels are never clipped
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def save_figures(figs: list[Figure], stem: Path) -> list[Path]:
    """Save one figure as ``stem``, several as ``stem_part1``, ``stem_part2``, ... (PNG and PDF each)."""
    if len(figs) == 1:
        return save_figure(figs[0], stem)
    return [p for i, fig in enumerate(figs) for p in save_figure(fig, stem.with_name(f"{stem.name}_part{i + 1}"))]


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for ``IPython.display.Image`` in notebooks)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")  # the legend sits outside the panels
    return buf.getvalue()
