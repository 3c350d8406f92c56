"""Ground-truth reliability: accuracy intervals, retest tau, the noise ceiling and two-level tau intervals, on
simulated per-sample correctness with known noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from medxfer.analysis.correlation import bootstrap_tau, comparable
from medxfer.analysis.reliability import (
    ABOVE, RANDOM, GroundTruth, balanced_accuracy, ceiling, reliability_tables, resample, retest_tau_bootstrap,
    retest_tau_seeds, score_tau_interval, stratified_counts,
)


def _noisy(seed: int, *, n_models=10, n_test=300, n_seeds=1, spread=(0.6, 0.9)) -> tuple[GroundTruth, np.ndarray]:
    """Models with true accuracies spread over ``spread``, each correct on a test sample with that probability,
    independently: the smaller the test set, the noisier the observed ranking. Returns the truth too."""
    rng = np.random.default_rng(seed)
    p = np.sort(rng.uniform(*spread, n_models))
    labels = np.repeat([0, 1], n_test // 2)
    correct = tuple(rng.uniform(size=(n_seeds, n_test)) < p[m] for m in range(n_models))
    return GroundTruth(tuple(f"m{m:02d}" for m in range(n_models)), labels, correct,
                       tuple(tuple(range(n_seeds)) for _ in range(n_models))), p


def _noiseless(n_models=8, n_test=400) -> GroundTruth:
    """Model m is correct on a superset of model m-1's samples, far apart: every resample keeps the ranking."""
    labels = np.repeat([0, 1], n_test // 2)
    correct = []
    for m in range(n_models):
        c = np.zeros(n_test, bool)
        k = int((0.5 + 0.05 * m) * (n_test // 2))
        c[:k] = c[n_test // 2:n_test // 2 + k] = True
        correct.append(c[None])
    return GroundTruth(tuple(f"m{m}" for m in range(n_models)), labels, tuple(correct), tuple((0,) for _ in correct))


def test_balanced_accuracy_from_correctness_matches_sklearn_on_resamples():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 50)
    pred = rng.integers(0, 3, (4, 50))
    counts = stratified_counts(labels, 5, rng)
    assert (counts.sum(1) == 50).all()
    for k in range(3):  # stratified: every resample keeps the class sizes
        assert (counts[:, labels == k].sum(1) == (labels == k).sum()).all()
    got = balanced_accuracy(pred == labels, labels, counts)
    for b in range(5):
        idx = np.repeat(np.arange(50), counts[b])
        for r in range(4):
            assert got[b, r] == pytest.approx(balanced_accuracy_score(labels[idx], pred[r, idx]), abs=1e-12)


def test_ceiling_is_one_for_a_noiseless_ground_truth():
    r = resample(_noiseless(), n_boot=300, seed=0)
    assert ceiling([r]) == 1.0 and retest_tau_bootstrap([r]) == 1.0
    # a perfect score (the true ranking) then has tau 1 and an interval that excludes random
    iv = score_tau_interval([np.arange(8.0)], [r], seed=0)
    assert iv.tau == 1.0 and iv.verdict == ABOVE
    assert iv.two_level == pytest.approx(iv.one_level)  # no test-set noise: the second level adds nothing


def test_ceiling_falls_as_test_set_noise_grows():
    """Fixed true accuracies, smaller and smaller test sets: averaged over 6 simulated studies, the ceiling and
    the retest tau fall strictly with every step."""
    sizes = [4000, 1000, 300, 100, 30]
    ceil, retest = [], []
    for n in sizes:
        rs = [resample(_noisy(s, n_test=n)[0], n_boot=200, seed=s) for s in range(6)]
        ceil.append(np.mean([ceiling([r]) for r in rs]))
        retest.append(np.mean([retest_tau_bootstrap([r]) for r in rs]))
    print("ceiling by test size", dict(zip(sizes, np.round(ceil, 3))), "retest", dict(zip(sizes, np.round(retest, 3))))
    assert ceil[0] > 0.9 and all(a > b for a, b in zip(ceil, ceil[1:])), ceil
    assert all(a > b for a, b in zip(retest, retest[1:])), retest
    assert all(r < c for r, c in zip(retest[1:], ceil[1:]))  # two noisy draws agree less than one with the observed


def test_ceiling_tracks_how_often_resamples_agree_with_the_truth():
    """The ceiling estimates tau(true ranking, observed ranking); over 20 simulated studies of 100 test
    samples, the two agree on average within 0.05 (measured: see the printed values)."""
    from scipy import stats

    ceil, actual = [], []
    for s in range(20):
        gt, p = _noisy(100 + s, n_test=100)
        r = resample(gt, n_boot=300, seed=s)
        ceil.append(ceiling([r]))
        actual.append(stats.kendalltau(p, r.observed).statistic)
    print(f"mean ceiling {np.mean(ceil):.3f}, mean tau(truth, observed) {np.mean(actual):.3f}")
    assert abs(np.mean(ceil) - np.mean(actual)) < 0.05


def test_one_level_interval_is_bootstrap_tau_and_two_level_contains_it():
    widen = []
    for s in range(8):
        gt, p = _noisy(s, n_test=100)
        r = resample(gt, n_boot=500, seed=0)
        score = p + np.random.default_rng(50 + s).normal(0, 0.05, len(p))
        iv = score_tau_interval([score], [r], seed=3)
        assert iv.one_level == pytest.approx(bootstrap_tau([(comparable(pd.Series(score)).to_numpy(), r.observed)],
                                                           n_boot=500, seed=3), abs=0)
        lo1, hi1 = iv.one_level
        lo2, hi2 = iv.two_level
        assert lo2 <= lo1 and hi1 <= hi2
        widen.append((hi2 - lo2) - (hi1 - lo1))
    # 100 test samples: the test-set level must add real width, not just touch the models-only interval
    print("two-level minus one-level width", np.round(widen, 3))
    assert np.mean(widen) > 0.05


def test_verdict_says_random_for_an_unrelated_score():
    gt, p = _noisy(3, n_models=12, n_test=100)
    r = resample(gt, n_boot=500, seed=0)
    unrelated = np.random.default_rng(7).permutation(12).astype(float)
    iv = score_tau_interval([unrelated], [r], seed=0)
    assert iv.two_level[0] <= 0 <= iv.two_level[1] and iv.verdict == RANDOM


def test_seed_replicates_retest_and_intervals():
    gt, _ = _noisy(4, n_seeds=3, n_test=200)
    r = resample(gt, n_boot=200, seed=0)
    tau, n = retest_tau_seeds(r)
    assert n == 3 and -1 <= tau <= 1
    # observed = mean over seeds of the full-test-set accuracies
    expected = [np.mean([balanced_accuracy(c[s][None], gt.labels)[0, 0] for s in range(3)]) for c in gt.correct]
    assert r.observed == pytest.approx(expected, abs=1e-9)
    one_seed, _ = _noisy(4, n_seeds=1, n_test=200)
    assert np.isnan(retest_tau_seeds(resample(one_seed, n_boot=20))[0])


def test_bootstrap_is_seeded():
    gt, _ = _noisy(5)
    a, b = resample(gt, n_boot=50, seed=1), resample(gt, n_boot=50, seed=1)
    assert np.array_equal(a.boot, b.boot) and not np.array_equal(a.boot, resample(gt, n_boot=50, seed=2).boot)


def test_from_predictions_aligns_samples_by_id_and_refuses_another_test_set():
    ids = np.array(["a", "b", "c", "d"])
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    rev = slice(None, None, -1)
    gt = GroundTruth.from_predictions([("m1", 0, ids, labels, probs), ("m2", 0, ids[rev], labels[rev], probs[rev]),
                                       ("m1", 1, ids, labels, probs[:, ::-1])])
    assert gt.models == ("m1", "m2") and gt.seeds == ((0, 1), (0,))
    assert gt.correct[0].tolist() == [[True, True, False, True], [False, False, True, False]]
    assert gt.correct[1].tolist() == [[True, True, False, True]]
    with pytest.raises(ValueError, match=r"model 'm3' seed 0: its test set \(3 samples\) is not the one of model 'm1'"):
        GroundTruth.from_predictions([("m1", 0, ids, labels, probs), ("m3", 0, ids[:3], labels[:3], probs[:3])])
    with pytest.raises(ValueError, match="model 'm2' seed 0: same sample ids as model 'm1' but other labels"):
        GroundTruth.from_predictions([("m1", 0, ids, labels, probs), ("m2", 0, ids, 1 - labels, probs)])


def test_reliability_tables_per_dataset_and_pooled():
    truths = {"d1": _noisy(10, n_models=6)[0], "d2": _noisy(11, n_models=6)[0]}
    rows = []
    for d, gt in truths.items():
        acc = balanced_accuracy(np.concatenate(gt.correct), gt.labels)[0]
        for m, a in zip(gt.models, acc):
            rows += [{"dataset": d, "model": m, "score": "good", "value": a, "target": a},
                     {"dataset": d, "model": m, "score": "const", "value": 1.0, "target": a}]
    rel, iv, acc = reliability_tables(truths, pd.DataFrame(rows), n_boot=200, seed=0)
    assert list(rel.dataset) == ["d1", "d2", "ALL"] and (rel.n_test == [300, 300, 600]).all()
    assert ((acc.acc_lo <= acc.accuracy) & (acc.accuracy <= acc.acc_hi)).all() and len(acc) == 12
    good = iv[iv.score == "good"].set_index("dataset")
    assert (good.tau == 1.0).all() and list(good.index) == ["d1", "d2", "ALL"]
    assert good.loc["d1", "ceiling"] == rel.set_index("dataset").loc["d1", "ceiling"]
    assert set(iv[iv.score == "const"].verdict) == {"undefined"}  # a constant score: NaN, said so
