"""Ensembles of scores: mean rank, mean z-score, linear pooling learned leave-one-dataset-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxfer.analysis import (
    AnalysisError,
    Ensemble,
    EnsembleWarning,
    add_ensembles,
    apply_pooling,
    correlate,
    fit_linear_pooling,
    linear_lodo,
    mean_rank,
    mean_zscore,
    parse_ensembles,
)

DEFAULT = parse_ensembles({"ens_rank": {"kind": "rank"}, "ens_z": {"kind": "zscore"}, "ens_linear": {"kind": "linear"}})


def _long(values: dict[str, dict[str, list[float]]], targets: dict[str, list[float]]) -> pd.DataFrame:
    """{dataset: {score: values per model}}, {dataset: target per model} -> the long table (models m0, m1, ...)."""
    rows = []
    for d, scores in values.items():
        for s, vals in scores.items():
            rows += [{"dataset": d, "model": f"m{i}", "score": s, "value": v, "target": targets[d][i]} for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def _values(frame: pd.DataFrame, dataset: str) -> np.ndarray:
    return frame[frame.dataset == dataset].sort_values("model")["value"].to_numpy()


def _random_table(rng, datasets=("d1", "d2", "d3"), scores=("s1", "s2", "s3"), n_models=6) -> pd.DataFrame:
    values = {d: {s: list(rng.normal(size=n_models)) for s in scores} for d in datasets}
    return _long(values, {d: list(rng.uniform(0.5, 0.9, n_models)) for d in datasets})


def test_mean_rank_and_mean_zscore_by_hand():
    # s1 = [1, 2, 2] ranks [1, 2.5, 2.5]; s2 = [3, 1, 2] ranks [3, 1, 2]
    # z(s1): mean 5/3, std sqrt(2)/3 -> [-sqrt(2), 1/sqrt(2), 1/sqrt(2)]; z(s2): mean 2, std sqrt(2/3) -> [sqrt(1.5), -sqrt(1.5), 0]
    # d2 is d1 under a positive affine map per score: within-dataset ranks and z-scores are the same
    table = _long({"d1": {"s1": [1, 2, 2], "s2": [3, 1, 2]},
                   "d2": {"s1": [110, 120, 120], "s2": [-0.7, -0.9, -0.8]}},
                  {"d1": [0.5, 0.6, 0.7], "d2": [0.9, 0.8, 0.7]})
    ranks = mean_rank(table)
    assert list(ranks.columns) == ["dataset", "model", "value"]
    z = mean_zscore(table)
    expected_z = [(-np.sqrt(2) + np.sqrt(1.5)) / 2, (1 / np.sqrt(2) - np.sqrt(1.5)) / 2, (1 / np.sqrt(2)) / 2]
    for d in ("d1", "d2"):
        np.testing.assert_allclose(_values(ranks, d), [2.0, 1.75, 2.25])
        np.testing.assert_allclose(_values(z, d), expected_z, atol=1e-9)
    np.testing.assert_allclose(_values(mean_rank(table, ["s2"]), "d1"), [3, 1, 2])


def test_constant_score_contributes_zero_and_warns():
    table = _long({"d": {"s1": [1, 2, 3], "flat": [5, 5, 5],
                         # H-Score = C - 1 with last-bit noise: constant at the analysis' 10 significant digits
                         "noisy": [0.99999999999999856, 0.99999999999999978, 0.9999999999999990]}},
                  {"d": [0.5, 0.6, 0.7]})
    with pytest.warns(EnsembleWarning, match="constant over the models of a dataset contribute 0 .*d/flat, d/noisy"):
        z = mean_zscore(table)
    np.testing.assert_allclose(_values(z, "d"), np.array([-1, 0, 1]) * np.sqrt(1.5) / 3)
    # a constant score is a tie for every model: the mean rank of all three is shifted, not reordered
    np.testing.assert_allclose(_values(mean_rank(table), "d"), (np.array([1, 2, 3]) + 2 + 2) / 3)


def test_ensembles_are_scores_for_correlate():
    table = _random_table(np.random.default_rng(0))
    out = add_ensembles(table, DEFAULT)
    ens = out.table[out.table.score.str.startswith("ens_")]
    assert len(out.table) == len(table) + 3 * 3 * 6
    # every ensemble row carries the model's accuracy on that dataset
    merged = ens.merge(table[table.score == "s1"], on=["dataset", "model"], suffixes=("", "_s1"))
    np.testing.assert_array_equal(merged.target, merged.target_s1)
    corr = correlate(out.table, n_boot=50)
    assert set(corr.score) == {"s1", "s2", "s3", "ens_rank", "ens_z", "ens_linear"}
    assert set(corr[corr.score == "ens_z"].dataset) == {"d1", "d2", "d3", "ALL"}
    assert list(out.weights.columns) == ["ensemble", "held_out", "n_train", "alpha", "weight/s1", "weight/s2", "weight/s3"]
    assert list(out.weights.held_out) == ["d1", "d2", "d3", "none"] and list(out.weights.n_train) == [12, 12, 12, 18]


def test_linear_lodo_never_sees_the_held_out_target():
    table = _random_table(np.random.default_rng(1))
    values, weights = linear_lodo(table)
    d1 = table.dataset == "d1"
    shuffled = table.copy()
    shuffled.loc[d1, "target"] = 1.5 - shuffled.loc[d1, "target"]  # reverses d1's ranking of the models
    values_b, weights_b = linear_lodo(shuffled)
    np.testing.assert_array_equal(_values(values_b, "d1"), _values(values, "d1"))
    pd.testing.assert_frame_equal(weights_b[weights_b.held_out == "d1"], weights[weights.held_out == "d1"])
    # the other datasets were fitted on d1's target: theirs move
    assert not np.allclose(_values(values_b, "d2"), _values(values, "d2"))
    assert not np.allclose(_values(values_b, "d3"), _values(values, "d3"))


def _exact_linear_table(rng, datasets=("d1", "d2", "d3", "d4"), n_models=8) -> pd.DataFrame:
    """Scores s1, s2 and a noise score whose within-dataset z-scores are orthonormal; the target is an exact
    (per-dataset affine) linear function 2 z(s1) + z(s2) of s1 and s2."""
    values, targets = {}, {}
    for k, d in enumerate(datasets):
        m = rng.normal(size=(n_models, 3))
        q, _ = np.linalg.qr(m - m.mean(0))
        z = q * np.sqrt(n_models)  # centred, std 1, uncorrelated
        values[d] = {"s1": list(3 + 0.5 * (k + 1) * z[:, 0]), "s2": list(-1 + 2 * z[:, 1]), "noise": list(7 * z[:, 2])}
        targets[d] = list(0.6 + 0.02 * k + 0.03 * (2 * z[:, 0] + z[:, 1]))
    return _long(values, targets)


def test_linear_pooling_recovers_an_exact_linear_target():
    table = _exact_linear_table(np.random.default_rng(2))
    out = add_ensembles(table, DEFAULT)
    corr = correlate(out.table, n_boot=50).set_index(["dataset", "score"])
    for d in ("d1", "d2", "d3", "d4", "ALL"):
        assert corr.loc[(d, "ens_linear"), "tau"] == pytest.approx(1.0)
        assert corr.loc[(d, "ens_linear"), "regret"] == 0
    assert (corr.xs("ens_rank", level="score").tau < 1).any()  # the noise score misleads the unweighted mean
    # z(target) = (2 z1 + z2) / sqrt(5); orthonormal features: ridge shrinks that by 1 / (1 + alpha)
    w = fit_linear_pooling(table, ["s1", "s2", "noise"])
    np.testing.assert_allclose(w.to_numpy(), np.array([2, 1, 0]) / np.sqrt(5) / (1 + 1e-3), atol=1e-8)  # values compare at 10 digits
    lodo = out.weights.set_index("held_out")
    columns = ["weight/s1", "weight/s2", "weight/noise"]
    np.testing.assert_allclose(lodo.loc["none", columns].to_numpy(float), w.to_numpy(), atol=1e-8)
    np.testing.assert_allclose(lodo.loc["d2", columns].to_numpy(float), w.to_numpy(), atol=1e-8)


def test_fit_then_apply_ranks_a_new_dataset():
    table = _exact_linear_table(np.random.default_rng(3), datasets=("d1", "d2", "d3", "new"))
    train, new = table[table.dataset != "new"], table[table.dataset == "new"]
    w = fit_linear_pooling(train, ["s1", "s2", "noise"], alpha=0.0)
    ranked = apply_pooling(new.drop(columns="target"), w.to_dict())
    truth = new[new.score == "s1"].sort_values("model").target.to_numpy()
    assert list(np.argsort(_values(ranked, "new"))) == list(np.argsort(truth))
    with pytest.raises(AnalysisError, match=r"score\(s\) \['logme'\] not in the table to pool; available: \['noise', 's1', 's2'\]"):
        apply_pooling(new, pd.Series({"s1": 1.0, "logme": 0.5}))


def test_linear_needs_two_datasets():
    table = _random_table(np.random.default_rng(4), datasets=("only",))
    with pytest.raises(AnalysisError, match=r"leave-one-dataset-out needs >= 2 datasets .*found 1: \['only'\]"):
        linear_lodo(table)
    # in add_ensembles (the default analysis config) a one-dataset table skips the linear ensemble, with a warning
    with pytest.warns(EnsembleWarning, match=r"ensemble 'ens_linear' \(kind linear\) on the table skipped: leave-one-dataset-out needs >= 2"):
        result = add_ensembles(table, DEFAULT)
    assert set(result.table["score"]) == set(table["score"]) | {"ens_rank", "ens_z"} and result.weights.empty
    assert len(fit_linear_pooling(table)) == 3  # fitting on every dataset needs only one


def test_config_errors_name_the_culprit():
    with pytest.raises(AnalysisError, match=r"unknown kind 'median'; expected one of \['rank', 'zscore', 'linear'\]"):
        parse_ensembles({"ens_median": {"kind": "median"}})
    with pytest.raises(AnalysisError, match=r"ensemble 'e': unknown key\(s\) \['score'\]"):
        parse_ensembles([{"name": "e", "kind": "rank", "score": ["s1"]}])
    with pytest.raises(AnalysisError, match="alpha must be a finite number >= 0"):
        Ensemble("e", "linear", alpha=-1.0)
    assert parse_ensembles(None) == [] and parse_ensembles({}) == []
    table = _random_table(np.random.default_rng(5))
    with pytest.raises(AnalysisError, match=r"ensemble 'mine' \(kind rank\) on the OOD table: score\(s\) \['logme'\] not in "
                                            r"the OOD table; available: \['s1', 's2', 's3'\]"):
        add_ensembles(table, [Ensemble("mine", "rank", ("s1", "logme"))], where="the OOD table")
    with pytest.raises(AnalysisError, match=r"ensemble name\(s\) \['s1'\] already used by scores"):
        add_ensembles(table, [Ensemble("s1", "zscore")])


def test_missing_score_is_an_error_or_left_out_when_incomplete_is_allowed():
    table = _random_table(np.random.default_rng(6))
    gap = table[~((table.dataset == "d2") & (table.model == "m3") & (table.score == "s2"))]
    with pytest.raises(AnalysisError, match=r"lacks a score the ensemble combines: model='m3' dataset='d2' score='s2'.*allow_incomplete=true"):
        add_ensembles(gap, DEFAULT)
    # an ensemble that does not use the missing score is unaffected
    only_s1 = add_ensembles(gap, [Ensemble("r", "rank", ("s1", "s3"))]).table
    assert (only_s1.score == "r").sum() == 18
    with pytest.warns(EnsembleWarning, match="left out of the ensemble .*model='m3' dataset='d2' score='s2'"):
        out = add_ensembles(gap, DEFAULT, allow_incomplete=True)
    for name in ("ens_rank", "ens_z", "ens_linear"):
        rows = out.table[out.table.score == name]
        assert len(rows) == 17 and not ((rows.dataset == "d2") & (rows.model == "m3")).any()
    # d2's ranks are over its 5 complete models
    np.testing.assert_allclose(_values(out.table[out.table.score == "ens_rank"], "d2"),
                               _values(mean_rank(gap[~((gap.dataset == "d2") & (gap.model == "m3"))]), "d2"))
    correlate(out.table, n_boot=20)  # the analysis goes on with what exists


def test_rank_and_zscore_need_no_accuracy_column():
    """A new dataset has scores but no fine-tuned accuracies yet (medxfer-rank)."""
    table = pd.DataFrame({"dataset": "new", "model": ["a", "b", "c"] * 2, "score": ["s1"] * 3 + ["s2"] * 3,
                          "value": [1.0, 2.0, 3.0, 30.0, 10.0, 20.0]})
    ranks = mean_rank(table).set_index("model")["value"]
    assert ranks.to_dict() == {"a": 2.0, "b": 1.5, "c": 2.5}
    z = mean_zscore(table).set_index("model")["value"]
    assert z.idxmax() == "c" and z.idxmin() == "b"
