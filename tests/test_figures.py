"""Figures: scatter panels with accuracy error bars and a legend naming every model, split at most
``max_columns`` scores per figure; the tau heatmap with the ceiling column; nothing clipped in the files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection

from medxfer.analysis import correlate
from medxfer.analysis.figures import correlation_figures, save_figure, tau_heatmap
from medxfer.analysis.reliability import GroundTruth, reliability_tables

MODELS = [f"model_{i}" for i in range(9)]


def _table(n_scores: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for d in ("d1", "d2"):
        acc = rng.uniform(0.5, 0.9, len(MODELS))
        for s in range(n_scores):
            val = acc + rng.normal(0, 0.1, len(MODELS))
            rows += [{"dataset": d, "model": m, "score": f"s{s:02d}", "value": v, "target": a}
                     for m, v, a in zip(MODELS, val, acc)]
    return pd.DataFrame(rows)


def _legend_names(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_scatter_figures_split_columns_and_name_every_model(tmp_path):
    table = _table(11)
    corr = correlate(table, n_boot=20)
    errors = table.drop_duplicates(["dataset", "model"]).assign(acc_lo=lambda t: t.target - 0.05,
                                                                acc_hi=lambda t: t.target + 0.03)
    figs = correlation_figures(table, corr, title="t", target_label="acc", errors=errors, max_columns=8)
    assert len(figs) == 2
    assert [len(f.axes) for f in figs] == [2 * 8, 2 * 3]  # datasets x score columns
    assert [f.axes[0].get_title() for f in figs] == ["s00", "s08"]
    for fig in figs:
        assert _legend_names(fig) == MODELS
        # one error bar per model in every panel (one collection of bars), from acc_lo to acc_hi
        for ax in fig.axes:
            (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
            spans = sorted(round(float(seg[1, 1] - seg[0, 1]), 6) for seg in bars.get_segments())
            assert spans == [0.08] * len(MODELS)
    paths = save_figure(figs[0], tmp_path / "scatter")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    # the legend sits right of the panels: the saved (tight) image is wider than the figure itself
    with open(paths[0], "rb") as f:
        width = int.from_bytes(f.read(24)[16:20], "big")
    assert width > figs[0].get_figwidth() * 150


def test_scatter_without_intervals_has_no_error_bars():
    table = _table(2)
    (fig,) = correlation_figures(table, correlate(table, n_boot=20), title="t", target_label="acc")
    assert not any(isinstance(c, LineCollection) for ax in fig.axes for c in ax.collections)
    assert _legend_names(fig) == MODELS


def test_tau_heatmap_writes_each_interval_and_the_ceiling(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    truths, rows = {}, []
    for d in ("d1", "d2"):
        correct = tuple(rng.uniform(size=(1, 100)) < p for p in np.linspace(0.6, 0.9, len(MODELS)))
        truths[d] = GroundTruth(tuple(MODELS), labels, correct, tuple((0,) for _ in MODELS))
        rows += [{"dataset": d, "model": m, "score": s, "value": v, "target": 0.0}
                 for s in ("good", "noise") for m, v in zip(MODELS, np.arange(9.0) if s == "good" else rng.normal(size=9))]
    rel, iv, _ = reliability_tables(truths, pd.DataFrame(rows), n_boot=100)
    fig = tau_heatmap(iv, title="t", scores=["good", "noise"])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 3 * 3  # (d1, d2, ALL) x (good, noise, ceiling)
    cell = iv.set_index(["dataset", "score"]).loc[("d1", "good")]
    assert f"{cell.tau:.2f}\n[{cell.tau2_lo:.2f}, {cell.tau2_hi:.2f}]" in texts
    assert f"{rel.set_index('dataset').loc['ALL', 'ceiling']:.2f}" in texts
    assert [t.get_text() for t in ax.get_yticklabels()] == ["d1", "d2", "ALL"]
    assert [t.get_text() for t in ax.get_xticklabels()][-1].startswith("ceiling")
    paths = save_figure(fig, tmp_path / "heat")
    assert all(p.is_file() for p in paths)
    with pytest.raises(ValueError, match="no tau intervals"):
        tau_heatmap(iv.iloc[:0], title="empty")
