"""Invariances the scores must have, checked on random inputs with hypothesis."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medxfer.scores import compute_scores, hscore, leep, nce
from scores_reference import limit_threads_for_small_problems, synthetic_scores_data

# derandomized: a CI run checks the same 12 problems each time. Random draws now and then make a near-singular
# feature covariance (H-Score at its degenerate value C - 1), where the order of a sum moves the score by ~1e-8
# relative: floating point, not a dependence on the order of the samples.
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
# N-LEEP's k-means++ start draws sample *indices* (scikit-learn, random_state 42), so in the paper's code and
# here it depends on the order of the samples; every other score is a function of the sample set.
ORDER_FREE = ["hscore", "reg_hscore", "nce", "leep", "logme", "gbc"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with limit_threads_for_small_problems():
        yield


def quiet_scores(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_scores(*args, **kwargs)


@st.composite
def problems(draw, min_n=20, max_n=90, max_d=20):
    n = draw(st.integers(min_value=min_n, max_value=max_n))
    d = draw(st.integers(min_value=2, max_value=max_d))
    c = draw(st.integers(min_value=2, max_value=4))
    s = draw(st.integers(min_value=2, max_value=8))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    features, labels, probs = synthetic_scores_data(n, d, c, s, seed=seed, latent=4, separation=0.7, dtype=np.float64)
    return features, labels, probs, seed


@SETTINGS
@given(problems())
def test_permuting_samples_changes_no_order_free_score(problem):
    features, labels, probs, seed = problem
    order = np.random.default_rng(seed).permutation(len(labels))
    before = quiet_scores(features, labels, probs, names=ORDER_FREE)
    after = quiet_scores(features[order], labels[order], probs[order], names=ORDER_FREE)
    assert after == pytest.approx(before, rel=1e-9, abs=1e-12)


@SETTINGS
@given(problems())
def test_renaming_classes_changes_nothing(problem):
    features, labels, probs, seed = problem
    rng = np.random.default_rng(seed)
    n_classes = labels.max() + 1
    names = np.array([f"class-{v}" for v in rng.permutation(1000)[:n_classes]])  # a random bijection to strings
    before = quiet_scores(features, labels, probs)
    after = quiet_scores(features, names[labels], probs)
    assert after == pytest.approx(before, rel=1e-9, abs=1e-12)


@SETTINGS
@given(problems(min_n=40), st.floats(min_value=-2.0, max_value=2.0))
def test_hscore_is_invariant_to_invertible_linear_maps(problem, log_scale):
    features, labels, _, seed = problem
    rng = np.random.default_rng(seed)
    d = features.shape[1]
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.exp(rng.uniform(-1.0, 1.0, size=d) + log_scale)  # condition number <= e^2
    mapped = features @ (rotation * scales) + rng.normal(size=d)  # plus a shift, which centring removes
    assert hscore(mapped, labels) == pytest.approx(hscore(features, labels), rel=1e-7)


@SETTINGS
@given(problems(min_n=10, max_n=60))
def test_leep_and_nce_are_invariant_to_permuting_source_classes(problem):
    _, labels, probs, seed = problem
    columns = np.random.default_rng(seed).permutation(probs.shape[1])
    assert leep(probs[:, columns], labels) == pytest.approx(leep(probs, labels), rel=1e-12)
    assert nce(probs[:, columns], labels) == pytest.approx(nce(probs, labels), rel=1e-12, abs=1e-15)


def test_nleep_is_deterministic_and_sample_order_only_moves_its_start():
    features, labels, probs = synthetic_scores_data(300, 12, 3, 4, seed=11, latent=4, separation=2.0)
    first = quiet_scores(features, labels, names=["nleep"])
    assert quiet_scores(features, labels, names=["nleep"]) == first
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = quiet_scores(features[order], labels[order], names=["nleep"])
    # well-separated classes: another k-means start lands on (almost) the same mixture
    assert shuffled["nleep"] == pytest.approx(first["nleep"], abs=0.05)
