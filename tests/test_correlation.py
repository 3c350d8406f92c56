"""correlate(): per-dataset and pooled correlations, against scipy and the paper's published Figure 3."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medxfer.analysis import AnalysisError, UndefinedCorrelation, correlate
from medxfer.analysis.correlation import pooled_tau

REFERENCE = Path(os.environ.get("MEDXFER_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference")) / "chaves2023"


def _table(rng, datasets=("d1", "d2"), scores=("s1", "s2"), n_models=7):
    rows = []
    for d in datasets:
        target = rng.uniform(0.5, 0.9, n_models)
        for s in scores:
            value = target + rng.normal(0, 0.1, n_models)
            rows += [{"dataset": d, "model": f"m{i}", "score": s, "value": value[i], "target": target[i]} for i in range(n_models)]
    return pd.DataFrame(rows)


def _scipy_bootstrap_interval(x, y, *, n_boot, seed, level=0.95):
    """The documented interval, computed independently: resample the models with replacement (the same draws,
    ``rng.integers(0, n, (n_boot, n))``), scipy's tau-b of each resample, undefined ones dropped, percentiles."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a resample whose scores are all equal (tau undefined)
        taus = np.array([stats.kendalltau(x[i], y[i]).statistic for i in idx])
    taus = taus[np.isfinite(taus)]
    alpha = (1 - level) / 2
    return np.quantile(taus, alpha), np.quantile(taus, 1 - alpha)


def test_per_dataset_rows_match_scipy():
    table = _table(np.random.default_rng(0))
    out = correlate(table, n_boot=200)
    assert list(out.columns) == ["dataset", "score", "n", "tau", "tau_lo", "tau_hi", "wtau", "pearson", "spearman", "regret"]
    for _, row in out[out.dataset != "ALL"].iterrows():
        g = table[(table.dataset == row.dataset) & (table.score == row.score)]
        x, y = g.value.to_numpy(), g.target.to_numpy()
        assert row.n == 7
        assert row.tau == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert row.wtau == pytest.approx(stats.weightedtau(x, y).statistic, abs=1e-12)
        assert row.pearson == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert row.spearman == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        # a percentile interval need not contain the point estimate: check it against a bootstrap written here
        lo, hi = _scipy_bootstrap_interval(x, y, n_boot=200, seed=0)
        assert (row.tau_lo, row.tau_hi) == pytest.approx((lo, hi), abs=1e-12)
        assert -1 <= row.tau_lo < row.tau_hi <= 1


def test_tau_b_with_ties_matches_scipy():
    x = np.array([1, 1, 2, 3, 3, 3, 4.0])
    y = np.array([0.2, 0.1, 0.1, 0.5, 0.4, 0.4, 0.9])
    assert pooled_tau([(x, y)]) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_regret_hand_made():
    table = pd.DataFrame({
        "dataset": "d", "score": "s", "model": ["a", "b", "c", "d"],
        "value": [0.9, 0.1, 0.5, 0.3], "target": [0.70, 0.80, 0.75, 0.60],
    })
    row = correlate(table, n_boot=50).iloc[0]
    assert row.regret == pytest.approx(0.80 - 0.70)
    perfect = table.assign(value=table.target)
    assert correlate(perfect, n_boot=50).iloc[0].regret == 0


def test_grouped_tau_counts_pairs_only_within_a_dataset():
    # Within each dataset the score ranks perfectly; across datasets the values are offset so that a naive
    # pooled tau (pairs across datasets) would not be 1.
    rows = []
    for i in range(5):
        rows.append({"dataset": "d1", "model": f"m{i}", "score": "s", "value": float(i), "target": 0.5 + 0.05 * i})
        rows.append({"dataset": "d2", "model": f"m{i}", "score": "s", "value": 10.0 - i, "target": 0.9 + 0.01 * i})
    table = pd.DataFrame(rows)
    out = correlate(table, n_boot=100).set_index("dataset")
    assert out.loc["d1", "tau"] == pytest.approx(1.0) and out.loc["d2", "tau"] == pytest.approx(-1.0)
    assert out.loc["ALL", "tau"] == pytest.approx(0.0)  # 10 concordant + 10 discordant within-dataset pairs
    assert out.loc["ALL", "n"] == 10
    naive = stats.kendalltau(table.value, table.target).statistic
    assert naive != pytest.approx(0.0)


def test_bootstrap_is_seeded():
    table = _table(np.random.default_rng(1))
    a, b = correlate(table, seed=3), correlate(table, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = correlate(table, seed=4)
    assert not np.allclose(a.tau_lo, c.tau_lo)


def test_bad_tables_are_named():
    table = _table(np.random.default_rng(0))
    bad = table.copy()
    bad.loc[5, "value"] = np.nan
    with pytest.raises(AnalysisError, match=r"row 5: value=nan .*model='m5'"):
        correlate(bad)
    with pytest.raises(AnalysisError, match="several rows for dataset='d1', model='m0', score='s1'"):
        correlate(pd.concat([table, table.iloc[:1]], ignore_index=True))
    with pytest.raises(AnalysisError, match=r"lacks columns \['target'\]"):
        correlate(table.drop(columns="target"))
    const = table.assign(value=1.0)
    with pytest.warns(UndefinedCorrelation, match="tau undefined"):
        correlate(const, n_boot=20)


def _paper_table():
    if not REFERENCE.is_dir():
        pytest.skip(f"paper reference data not found at {REFERENCE}")
    scores = pd.read_csv(REFERENCE / "transf_metrics_values.csv")
    perf = pd.read_csv(REFERENCE / "task_performances.csv")
    t = scores.merge(perf, on=["task", "model"], validate="many_to_one")
    return pd.DataFrame({"dataset": t.task, "model": t.model, "score": t.metric.str.removesuffix("_score"),
                         "value": t.value, "target": t.test_acc_score})


@pytest.mark.parametrize("dataset,score,tau", [
    ("brain_tumor_kaggle", "logme", 0.58),
    ("breakhis", "hscore", 0.60),
    ("skin_splits", "leep", 0.33),
])
def test_paper_figure3_taus(dataset, score, tau):
    out = correlate(_paper_table()).set_index(["dataset", "score"])
    assert round(out.loc[(dataset, score), "tau"], 2) == tau
    assert out.loc[(dataset, score), "n"] == 10


def test_paper_table_every_panel_equals_scipy():
    table = _paper_table()
    out = correlate(table, n_boot=100)
    assert len(out) == 3 * 7 + 7
    for _, row in out[out.dataset != "ALL"].iterrows():
        g = table[(table.dataset == row.dataset) & (table.score == row.score)]
        assert row.tau == pytest.approx(stats.kendalltau(g.value, g.target).statistic, abs=1e-12)


def test_row_order_changes_nothing():
    table = _table(np.random.default_rng(2))
    shuffled = table.sample(frac=1.0, random_state=5).reset_index(drop=True)
    pd.testing.assert_frame_equal(correlate(table, n_boot=200), correlate(shuffled, n_boot=200))


def test_last_bit_noise_is_not_a_ranking():
    # H-Score equals C - 1 when N <= D; computed values differ only in the last bits
    table = pd.DataFrame({"dataset": "d", "score": "hscore", "model": ["a", "b", "c"],
                          "value": [0.99999999999999856, 0.99999999999999978, 0.9999999999999990],
                          "target": [0.6, 0.7, 0.8]})
    with pytest.warns(UndefinedCorrelation):
        row = correlate(table, n_boot=20).iloc[0]
    assert np.isnan(row.tau)
