"""Figures in the style of the paper's Figure 3: rows are datasets, columns scores, one marker per model,
a least-squares line, and Kendall's tau in each panel."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medxfer.analysis.correlation import comparable

MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p"]


def correlation_figure(table: pd.DataFrame, corr: pd.DataFrame, *, title: str, target_label: str,
                       scores: list[str] | None = None) -> Figure:
    """One panel per (dataset, score): score value (x) against ``target`` (y) for every model.

    Args:
        table: long table ``dataset, model, score, value, target`` (what :func:`correlate` took).
        corr: the output of :func:`correlate` for it (tau per dataset and score is printed in each panel).
        scores: the columns, in order (None: every score of the table, sorted); e.g. ensembles after the scores.
    """
    if len(table) == 0:
        raise ValueError(f"no data to plot for {title!r}")
    datasets = sorted(table["dataset"].unique())
    scores = list(scores) if scores is not None else sorted(table["score"].unique())
    models = sorted(table["model"].unique())
    cmap = matplotlib.colormaps["tab10"]
    style = {m: (MARKERS[i % len(MARKERS)], cmap(i % 10)) for i, m in enumerate(models)}
    tau = corr.set_index(["dataset", "score"])["tau"]
    # a bare Figure (no pyplot): no backend or display needed, and notebooks still render it inline
    fig = Figure(figsize=(2.3 * len(scores) + 1.5, 2.2 * len(datasets) + 0.6))
    axes = fig.subplots(len(datasets), len(scores), squeeze=False)
    for r, dataset in enumerate(datasets):
        for k, score in enumerate(scores):
            ax = axes[r, k]
            g = table[(table["dataset"] == dataset) & (table["score"] == score)]
            for _, row in g.iterrows():
                marker, color = style[row["model"]]
                ax.scatter(row["value"], row["target"], marker=marker, color=color, s=28, label=row["model"])
            if len(g) >= 2 and np.ptp(comparable(g["value"])) > 0:  # not for last-bit noise (H-Score, N <= D)
                x = g["value"].to_numpy(float)
                centre, spread = x.mean(), x.std()
                # fit on standardised x: scores such as H-Score span tiny ranges far from 0
                slope, intercept = np.polyfit((x - centre) / spread, g["target"].to_numpy(float), 1)
                xs = np.linspace(x.min(), x.max(), 20)
                ax.plot(xs, slope * (xs - centre) / spread + intercept, color="0.4", lw=1, ls="--")
            t = tau.get((dataset, score), np.nan)
            ax.text(0.04, 0.93, f"τ = {t:.2f}", transform=ax.transAxes, va="top", fontsize=9,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8"))
            ax.tick_params(labelsize=7)
            ax.xaxis.get_offset_text().set_fontsize(7)
            if r == 0:
                ax.set_title(score, fontsize=10)
            if k == 0:
                ax.set_ylabel(f"{dataset}\n{target_label}", fontsize=8)
    handles = [Line2D([], [], marker=style[m][0], color=style[m][1], ls="", label=m) for m in models]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(models), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(models) // 5), 1, 0.97))
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for ``IPython.display.Image`` in notebooks)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
