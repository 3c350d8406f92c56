"""Data-blind baselines (static_rank, n_params, dispersion) and the seed-replicate ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medxfer.analysis import AnalysisError
from medxfer.analysis.baselines import add_baselines, dispersion, static_rank
from medxfer.analysis.replicates import average_replicates, replicate_matrix


def _table(rng, datasets=("d1", "d2", "d3"), n_models=6) -> pd.DataFrame:
    rows = []
    for d in datasets:
        acc = rng.uniform(0.5, 0.9, n_models)
        rows += [{"dataset": d, "model": f"m{i}", "score": s, "value": rng.normal(), "target": acc[i]}
                 for i in range(n_models) for s in ("a", "b")]
    return pd.DataFrame(rows)


def test_static_rank_is_the_mean_rank_on_the_other_datasets():
    table = _table(np.random.default_rng(0))
    out = static_rank(table).set_index(["dataset", "model"])["value"]
    acc = table.drop_duplicates(["dataset", "model"]).pivot(index="model", columns="dataset", values="target")
    for held in ("d1", "d2", "d3"):
        others = [d for d in acc.columns if d != held]
        expected = np.mean([(stats.rankdata(acc[d]) - 1) / 5 for d in others], axis=0)
        assert out.xs(held).loc[acc.index].to_numpy() == pytest.approx(expected)


def test_static_rank_never_reads_the_held_out_accuracies():
    table = _table(np.random.default_rng(1))
    before = static_rank(table)
    changed = table.copy()
    rng = np.random.default_rng(2)
    d1 = changed["dataset"] == "d1"
    changed.loc[d1, "target"] = changed.loc[d1, "model"].map({f"m{i}": v for i, v in enumerate(rng.permutation(6) / 10)})
    after = static_rank(changed)
    held = lambda t: t[t.dataset == "d1"].set_index("model")["value"]  # noqa: E731
    pd.testing.assert_series_equal(held(before), held(after))
    # while the other datasets' values, which do read d1, change
    assert not np.allclose(before[before.dataset == "d2"]["value"], after[after.dataset == "d2"]["value"])


def test_add_baselines_and_its_notes():
    table = _table(np.random.default_rng(3))
    counts = {f"m{i}": 1e6 * (i + 1) for i in range(6)}
    out, notes = add_baselines(table, counts)
    assert not notes and set(out.score) == {"a", "b", "static_rank", "n_params"}
    n = out[(out.score == "n_params") & (out.dataset == "d2")].set_index("model")
    assert n.loc["m3", "value"] == 4e6 and n.loc["m3", "target"] == table[(table.dataset == "d2") & (table.model == "m3")].target.iloc[0]
    out, notes = add_baselines(table[table.dataset == "d1"], {"m0": 1.0})
    assert set(out.score) == {"a", "b"}
    assert any("static_rank left out" in n for n in notes)
    assert any("n_params left out: no parameter count (param n_params) for model(s) m1, m2" in n for n in notes)


def test_dispersion_is_one_for_a_static_hierarchy_and_the_mean_pairwise_tau():
    table = _table(np.random.default_rng(4))
    static = table.assign(target=table["model"].str[1:].astype(float))
    assert dispersion(static) == 1.0
    acc = table.drop_duplicates(["dataset", "model"]).pivot(index="model", columns="dataset", values="target")
    pairs = [("d1", "d2"), ("d1", "d3"), ("d2", "d3")]
    assert dispersion(table) == pytest.approx(np.mean([stats.kendalltau(acc[a], acc[b]).statistic for a, b in pairs]))
    assert np.isnan(dispersion(table[table.dataset == "d1"]))


def _replicates():
    return pd.DataFrame({"model": ["m1", "m1", "m2", "m2", "m1"], "dataset": ["d", "d", "d", "d", "e"],
                         "seed": [0, 1, 0, 1, 0], "trial": [3, 3, 1, 1, 2], "accuracy": [0.6, 0.8, 0.7, 0.7, 0.5]})


def test_replicates_are_averaged_for_the_ground_truth_and_kept_apart_for_reliability():
    avg = average_replicates(_replicates()).set_index(["dataset", "model"])
    assert avg.loc[("d", "m1"), "accuracy"] == pytest.approx(0.7) and avg.loc[("d", "m1"), "n_seeds"] == 2
    assert avg.loc[("d", "m1"), "accuracy_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert np.isnan(avg.loc[("e", "m1"), "accuracy_sd"]) and avg.loc[("e", "m1"), "trial"] == 2
    m = replicate_matrix(_replicates(), "d")
    assert m.loc["m1"].tolist() == [0.6, 0.8] and list(m.columns) == [0, 1]


def test_replicates_of_several_trials_or_duplicate_seeds_are_refused():
    two_trials = _replicates().assign(trial=[3, 4, 1, 1, 2])
    with pytest.raises(AnalysisError, match=r"model='m1' dataset='d': replicates of several trials \[3, 4\]"):
        average_replicates(two_trials)
    dup = _replicates().assign(seed=[0, 0, 0, 1, 0])
    with pytest.raises(AnalysisError, match="model='m1' dataset='d' seed=0: several runs"):
        average_replicates(dup)
