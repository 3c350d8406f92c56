"""LogME's two paths (medxfer/scores/logme.py): through the D x D covariance eigendecomposition, and through the Gram
matrix of the distinct rows (fewer distinct rows than dimensions: small datasets, rank's bootstrap draws), against
each other and the literal reference (tests/scores_reference.py::ref_logme)."""

from __future__ import annotations

import numpy as np
import pytest

from medxfer.scores import logme
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.logme import _evidence, _feature_side, _sample_side
from medxfer.scores.resample import stratified_draws
from scores_reference import limit_threads_for_small_problems, ref_logme, synthetic_scores_data

RTOL = 1e-8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with limit_threads_for_small_problems():
        yield


def both_paths(features, labels) -> tuple[float, float]:
    inputs = ScoreInputs(features, labels)
    return _evidence(inputs, _feature_side(inputs)), _evidence(inputs, _sample_side(inputs))


@pytest.mark.parametrize("n, d, c", [(120, 400, 4), (60, 60, 2), (300, 60, 3)], ids=["N<D", "N=D", "N>D"])
def test_paths_equal_each_other_and_the_reference_on_distinct_rows(n, d, c):
    features, labels, _ = synthetic_scores_data(n, d, c, 10, seed=n + d)
    feature_side, sample_side = both_paths(features, labels)
    reference = ref_logme(features, labels)
    assert sample_side == pytest.approx(reference, rel=RTOL)
    assert feature_side == pytest.approx(reference, rel=RTOL)
    assert logme(features, labels) == (sample_side if n < d else feature_side)


@pytest.mark.parametrize("n, d, c", [(200, 500, 5), (300, 120, 3)], ids=["draw P<D", "draw P>D"])
def test_sample_side_is_exact_on_a_bootstrap_draw(n, d, c):
    """A draw repeats rows: F^T F has D - P zero eigenvalues (P distinct rows), which the Gram matrix of the distinct
    rows leaves out exactly; the reference equals it once its SVD's rounding of them is set to the exact 0. (The D x D
    path keeps that rounding, which its fixed point amplifies: up to ~1e-4 relative on 600 x 1280 draws.)"""
    features, labels, _ = synthetic_scores_data(n, d, c, 10, seed=n + d)
    rows = stratified_draws(labels, 1, seed=0)[0]
    features, labels = features[rows], labels[rows]
    distinct = len(np.unique(features, axis=0))
    assert distinct < n
    _, sample_side = both_paths(features, labels)
    assert sample_side == pytest.approx(ref_logme(features, labels, rank=min(distinct, d)), rel=RTOL)
    assert logme(features, labels) == pytest.approx(sample_side, rel=RTOL)  # P > D: the D x D path, full rank


def test_copies_of_a_row_with_different_labels():
    """Byte-identical images filed under two classes: the fit cannot separate them, and the residual keeps that."""
    features, labels, _ = synthetic_scores_data(100, 300, 3, 10, seed=2)
    features = np.concatenate([features, features[:20], features[:5]])
    labels = np.concatenate([labels, (labels[:20] + 1) % 3, labels[:5]])
    _, sample_side = both_paths(features, labels)
    assert sample_side == pytest.approx(ref_logme(features, labels, rank=100), rel=RTOL)
    assert logme(features, labels) == sample_side
