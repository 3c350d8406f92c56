"""The noise ceiling of published accuracies (binomial per class), and ``medxfer-analyze reference=chaves2023``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medxfer.analysis.correlation import correlate
from medxfer.analysis.parametric import (
    binomial_accuracies, parametric_ceiling, parametric_resample, published_tables,
)
from medxfer.published import read_reference
from medxfer.analysis.reliability import GroundTruth, ceiling, resample

BIN = Path(sys.executable).parent


def test_identical_accuracies_have_a_ceiling_near_zero():
    # exactly equal accuracies are all ties, which tau-b cannot rank (NaN); accuracies a hair apart, far below
    # the test-set noise, are the same case: a re-measured ranking is a random permutation of them
    acc = 0.75 + 1e-6 * np.arange(10)
    assert abs(parametric_ceiling(acc, [105, 100, 115, 74], n_boot=2000, seed=0)) < 0.03


def test_widely_separated_accuracies_on_a_huge_test_set_have_a_ceiling_near_one():
    acc = np.linspace(0.55, 0.95, 10)
    assert parametric_ceiling(acc, [200_000, 200_000], n_boot=500, seed=0) > 0.99


def test_the_ceiling_falls_as_the_test_set_shrinks():
    acc = np.linspace(0.70, 0.80, 10)
    sizes = [100_000, 10_000, 1_000, 100]
    ceil = [parametric_ceiling(acc, [n // 4] * 4, n_boot=1000, seed=1) for n in sizes]
    assert all(a > b for a, b in zip(ceil, ceil[1:])), ceil


def test_draws_have_the_binomial_mean_and_variance():
    """a* averages Bin(n_k, a) / n_k over classes: mean a, variance a (1 - a) / C^2 * sum 1 / n_k."""
    acc, counts = np.array([0.6, 0.75, 0.9]), np.array([105, 100, 115, 74])
    draws = binomial_accuracies(acc, counts, n_boot=40_000, seed=3)
    assert draws.shape == (40_000, 3)
    expected_sd = np.sqrt(acc * (1 - acc) / len(counts) ** 2 * (1 / counts).sum())
    assert draws.mean(0) == pytest.approx(acc, abs=4 * expected_sd.max() / np.sqrt(40_000))
    assert draws.std(0) == pytest.approx(expected_sd, rel=0.03)


def test_equal_recalls_are_the_noisiest_recalls_of_a_given_mean_for_equal_classes():
    counts = [100, 100, 100]
    equal = binomial_accuracies([0.75], counts, n_boot=20_000, seed=0)
    unequal = binomial_accuracies([0.75], counts, recalls=[[0.95, 0.75, 0.55]], n_boot=20_000, seed=0)
    assert unequal.mean() == pytest.approx(0.75, abs=0.002)
    assert unequal.std() < 0.95 * equal.std()


def test_with_known_recalls_it_is_the_stratified_bootstrap_of_independent_models():
    """Simulated per-sample correctness, independent across models: the bootstrap of reliability.py and the
    binomial draws from the observed per-class recalls give the same ceiling (mean over 8 studies)."""
    boot, param = [], []
    for s in range(8):
        rng = np.random.default_rng(s)
        labels = np.repeat([0, 1, 2], [60, 90, 50])
        truth = np.sort(rng.uniform(0.6, 0.85, 8))
        correct = tuple((rng.uniform(size=len(labels)) < p)[None] for p in truth)
        gt = GroundTruth(tuple(f"m{m}" for m in range(8)), labels, correct, tuple((0,) for _ in correct))
        r = resample(gt, n_boot=600, seed=s)
        recalls = np.array([[c[0][labels == k].mean() for k in range(3)] for c in correct])
        boot.append(ceiling([r]))
        param.append(ceiling([parametric_resample(gt.models, r.observed, [60, 90, 50], recalls=recalls,
                                                  n_boot=600, seed=s)]))
    print(f"mean ceiling: stratified bootstrap {np.mean(boot):.3f}, binomial {np.mean(param):.3f}")
    assert np.mean(param) == pytest.approx(np.mean(boot), abs=0.03)


def test_draws_are_seeded():
    a = binomial_accuracies([0.7, 0.8], [50, 60], n_boot=10, seed=5)
    assert np.array_equal(a, binomial_accuracies([0.7, 0.8], [50, 60], n_boot=10, seed=5))
    assert not np.array_equal(a, binomial_accuracies([0.7, 0.8], [50, 60], n_boot=10, seed=6))


@pytest.mark.parametrize("acc,counts,recalls,match", [
    ([0.7, 1.2], [50, 50], None, r"accuracy=.*in \[0, 1\]"),
    ([0.7, 0.8], [50.5, 50], None, "class_counts=.*whole numbers"),
    ([0.7, 0.8], [50, 0], None, "class_counts=.*>= 1"),
    ([0.7, 0.8], [50, 50], [[0.7, 0.7]], r"recalls of shape \(1, 2\); expected \(2, 2\)"),
])
def test_bad_inputs_are_named(acc, counts, recalls, match):
    with pytest.raises(ValueError, match=match):
        binomial_accuracies(acc, counts, recalls=recalls, n_boot=10)


def test_the_vendored_paper_table_and_its_test_class_counts():
    ref = read_reference("chaves2023")
    counts = {d: n.tolist() for d, n in ref.class_counts.items()}
    assert counts == {"brain_tumor_kaggle": [105, 100, 115, 74], "skin_splits": [3467, 396], "breakhis": [496, 1086]}
    assert len(ref.table) == 3 * 10 * 7
    bt = ref.table[ref.table["dataset"] == "brain_tumor_kaggle"].drop_duplicates("model")["target"]
    assert (round(bt.min(), 3), round(bt.max(), 3)) == (0.746, 0.785)


def test_published_tables_keep_the_papers_taus_and_rank_the_ceilings_by_test_set_size():
    ref = read_reference("chaves2023")
    rel, intervals, accuracy = published_tables(ref.table, ref.class_counts, n_boot=400, seed=0)
    corr = correlate(ref.table, n_boot=50).set_index(["dataset", "score"])["tau"]
    got = intervals.set_index(["dataset", "score"])["tau"]
    assert got.loc[corr.index].to_numpy() == pytest.approx(corr.to_numpy())  # the paper's Figure 3 taus
    assert round(got.loc[("brain_tumor_kaggle", "logme")], 2) == 0.58
    c = rel.set_index("dataset")
    # 394 test images and accuracies within 0.04 of each other leave a perfect score far less room than
    # BreakHis' 1,582 or ISIC's 3,863 images
    assert c.loc["brain_tumor_kaggle", "ceiling"] < c.loc["breakhis", "ceiling"] < c.loc["skin_splits", "ceiling"]
    assert (c["ceiling_lo"] <= c["ceiling"]).all() and (c["ceiling"] <= c["ceiling_hi"]).all()
    assert ((intervals["tau2_lo"] <= intervals["tau"]) & (intervals["tau"] <= intervals["tau2_hi"])).all()
    a = accuracy[accuracy["dataset"] == "brain_tumor_kaggle"]
    assert ((a["acc_lo"] < a["accuracy"]) & (a["accuracy"] < a["acc_hi"])).all()
    assert ((a["acc_hi"] - a["acc_lo"]) > 0.06).all()  # about +-0.04 on 394 images


def test_published_tables_refuse_a_dataset_without_class_counts():
    table = pd.DataFrame({"dataset": ["d"] * 2, "model": ["a", "b"], "score": "s", "value": [1.0, 2.0],
                          "target": [0.7, 0.8]})
    with pytest.raises(ValueError, match=r"no test-set class counts for dataset\(s\) \['d'\]"):
        published_tables(table, {"other": [10, 10]}, n_boot=10)


def _analyze(tmp_path, *args):
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "medxfer-analyze"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_medxfer_analyze_reference_chaves2023_end_to_end(tmp_path):
    proc = _analyze(tmp_path, "reference=chaves2023", "bootstrap.n=300")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "test samples per class: brain_tumor_kaggle 105/100/115/74" in out
    assert "densenet169              0.785  [" in out
    assert "ceiling (mean tau-b" in out and "logme       +0.58 [" in out
    folder = tmp_path / "outputs" / "analysis" / "reference_chaves2023"
    for name in ("reliability.csv", "tau_intervals.csv", "accuracy_intervals.csv", "correlations.csv",
                 "figure3.png", "figure3.pdf", "tau_ceiling.png", "tau_heatmap.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    rel = pd.read_csv(folder / "reliability.csv")
    assert list(rel["dataset"]) == ["brain_tumor_kaggle", "breakhis", "skin_splits", "ALL"]
    assert not (tmp_path / "mlruns").exists()  # no tracking store is needed or made


def test_an_unknown_reference_is_one_clear_error(tmp_path):
    proc = _analyze(tmp_path, "reference=chaves2024")
    assert proc.returncode == 2
    assert "reference='chaves2024' is not shipped with medxfer; known: ['chaves2023']" in proc.stderr
    assert "Traceback" not in proc.stderr
