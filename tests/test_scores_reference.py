"""medxfer.scores against the literal NumPy / scikit-learn port of the paper's code (tests/scores_reference.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medxfer.scores import ScoreWarning, compute_scores, gbc, hscore, leep, logme, nce, nleep, reg_hscore
from scores_reference import (
    REFERENCE_SCORES,
    limit_threads_for_small_problems,
    ref_gbc,
    ref_hscore,
    ref_leep,
    ref_logme,
    ref_nce,
    ref_nleep_posteriors,
    ref_reg_hscore,
    reference_scores,
    synthetic_scores_data,
)

RTOL = 1e-6
ATOL = 1e-9  # for values that are 0 up to rounding (a perfectly separable N-LEEP, a vanishing GBC)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with limit_threads_for_small_problems():
        yield


def assert_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert isinstance(actual[name], float) and np.isfinite(actual[name]), name
        assert actual[name] == pytest.approx(expected[name], rel=RTOL, abs=ATOL), name


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


CASES = {
    # name: (n, d, c, s, seed, extra generator arguments)
    "float64, N > D": (300, 24, 3, 12, 0, {"dtype": np.float64}),
    "float32, N > D, ISIC-like 8 classes": (400, 40, 8, 20, 1, {"dtype": np.float32}),
    "N < D": (48, 80, 3, 10, 2, {"dtype": np.float64}),
    "N < D, float32": (60, 90, 2, 6, 3, {"dtype": np.float32}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_all_scores_match_reference(case):
    n, d, c, s, seed, extra = CASES[case]
    features, labels, probs = synthetic_scores_data(n, d, c, s, seed=seed, latent=8, separation=1.0, **extra)
    assert features.dtype == extra["dtype"]
    expected = quiet(reference_scores, features, labels, probs)
    actual = quiet(compute_scores, features, labels, probs)
    assert_close(actual, expected)


def test_string_and_sparse_integer_labels_are_reencoded():
    features, codes, probs = synthetic_scores_data(250, 20, 3, 8, seed=4, latent=6, separation=0.8)
    as_strings = np.array(["nevus", "melanoma", "keratosis"])[codes]
    as_sparse_ints = np.array([7, 42, 1000])[codes]  # max + 1 = 1001 classes in the paper's code
    expected = quiet(reference_scores, features, codes, probs)
    for labels in (as_strings, as_sparse_ints, list(as_strings)):
        assert_close(quiet(compute_scores, features, labels, probs), expected)


@pytest.mark.filterwarnings("ignore::medxfer.scores.ScoreWarning")
def test_public_functions_equal_compute_scores():
    features, labels, probs = synthetic_scores_data(200, 16, 3, 7, seed=5, latent=6, separation=0.8)
    together = compute_scores(features, labels, probs)
    one_by_one = {
        "hscore": hscore(features, labels),
        "reg_hscore": reg_hscore(features, labels),
        "nce": nce(probs, labels),
        "leep": leep(probs, labels),
        "nleep": nleep(features, labels),
        "logme": logme(features, labels),
        "gbc": gbc(features, labels),
    }
    assert together == pytest.approx(one_by_one, rel=1e-12)


def test_nleep_mixture_posteriors_match_scikit_learn():
    """The torch EM reproduces GaussianMixture(...).predict_proba, not just the final score."""
    import torch

    from medxfer.scores import ScoreInputs
    from medxfer.scores._gmm import fit_gaussian_mixture
    from medxfer.scores.nleep import pca_dimension_for_variance

    features, labels, _ = synthetic_scores_data(400, 30, 3, 5, seed=6, latent=8, separation=0.5)
    inputs = ScoreInputs(features, labels)
    projected = inputs.pca(pca_dimension_for_variance(inputs))
    fit = fit_gaussian_mixture(projected.contiguous(), 15)
    expected = ref_nleep_posteriors(features, labels)
    assert fit.posteriors.shape == expected.shape
    assert torch.allclose(fit.posteriors, torch.from_numpy(expected), rtol=0, atol=1e-8)
    assert fit.converged and fit.n_iter > 2


def test_mixture_that_does_not_converge_warns_and_matches_scikit_learn():
    import torch
    from sklearn.mixture import GaussianMixture

    from medxfer.scores._gmm import fit_gaussian_mixture

    rng = np.random.default_rng(7)
    z = np.concatenate([rng.normal(loc, 1.0, size=(80, 3)) for loc in (-2.0, 0.0, 2.5)])
    with pytest.warns(ScoreWarning, match="did not converge in 3 EM iterations"):
        fit = fit_gaussian_mixture(torch.from_numpy(z), 6, max_iter=3)
    expected = quiet(GaussianMixture(n_components=6, random_state=42, max_iter=3).fit, z).predict_proba(z)
    assert fit.n_iter == 3 and not fit.converged
    assert np.allclose(fit.posteriors.numpy(), expected, rtol=0, atol=1e-9)


def test_gbc_fallback_to_fewer_components_warns_and_matches_reference():
    features, labels, _ = synthetic_scores_data(30, 100, 3, 4, seed=8, latent=6, separation=1.0)
    with pytest.warns(ScoreWarning, match="GBC uses 29 PCA components instead of 64"):
        value = gbc(features, labels)
    assert value == pytest.approx(ref_gbc(features, labels, n_components=29), rel=RTOL, abs=ATOL)


def test_reference_literal_gbc_uses_sixty_four_components():
    features, labels, _ = synthetic_scores_data(300, 96, 3, 4, seed=9, latent=12, separation=0.5)
    value = gbc(features, labels)
    assert value == pytest.approx(ref_gbc(features, labels, n_components=64), rel=RTOL)
    assert value != pytest.approx(ref_gbc(features, labels, n_components=32), rel=1e-3)


# -- property-based agreement for the scores without a mixture fit (cheap enough for many shapes) --------------


@st.composite
def score_problems(draw):
    n = draw(st.integers(min_value=8, max_value=60))
    d = draw(st.integers(min_value=1, max_value=40))  # N < D and N > D both drawn
    c = draw(st.integers(min_value=2, max_value=min(5, n // 2)))
    s = draw(st.integers(min_value=2, max_value=9))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(c), rng.integers(0, c, size=n - c)])
    means = rng.normal(size=(c, d))
    features = np.maximum(means[labels] + rng.normal(size=(n, d)) + 0.3, 0.0)
    features[:, 0] += 0.01 * rng.normal(size=n)  # at least one column with variance
    logits = rng.normal(size=(n, s)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return features.astype(dtype), labels, probs.astype(dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(score_problems())
def test_scores_match_reference_on_random_shapes(problem):
    features, labels, probs = problem
    names = ["hscore", "reg_hscore", "nce", "leep", "logme", "gbc"]
    expected = {name: quiet(REFERENCE_SCORES[name], features, labels, probs) for name in names}
    actual = quiet(compute_scores, features, labels, probs, names=names)
    assert_close(actual, expected)


def test_reference_helpers_are_consistent():
    """Guards the reference itself: each helper equals its REFERENCE_SCORES entry."""
    features, labels, probs = synthetic_scores_data(120, 10, 3, 5, seed=10, latent=4)
    assert ref_hscore(features, labels) == REFERENCE_SCORES["hscore"](features, labels, probs)
    assert ref_reg_hscore(features, labels) == REFERENCE_SCORES["reg_hscore"](features, labels, probs)
    assert ref_logme(features, labels) == REFERENCE_SCORES["logme"](features, labels, probs)
    assert ref_leep(probs, labels) == REFERENCE_SCORES["leep"](features, labels, probs)
    assert ref_nce(probs, labels) == REFERENCE_SCORES["nce"](features, labels, probs)


def test_hscore_pseudo_inverse_keeps_small_but_real_directions():
    """A direction with ~3e-7 of the leading variance that separates the classes: rcond 1e-15 keeps it.

    (Much smaller eigenvalues are determined only to about 1e-16 / their relative size, in the reference too.)
    """
    rng = np.random.default_rng(12)
    labels = np.repeat([0, 1, 2], 100)
    base = rng.normal(size=(300, 6)) + np.array([[0.3], [0.0], [-0.3]])[labels]
    nearly_dependent = base[:, :1] + 1e-3 * (labels[:, None] + rng.normal(size=(300, 1)))
    features = np.concatenate([base, nearly_dependent], axis=1)
    expected = ref_hscore(features, labels)
    assert hscore(features, labels) == pytest.approx(expected, rel=RTOL)
    assert expected > hscore(base, labels) + 0.2  # the small direction separates the classes further


def test_leep_and_nce_match_reference_across_row_blocks():
    rng = np.random.default_rng(13)
    labels = rng.integers(0, 5, size=5000)  # more rows than one LEEP block
    logits = rng.normal(size=(5000, 40)) + 2.0 * (rng.normal(size=(5, 40)))[labels]
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    assert leep(probs, labels) == pytest.approx(ref_leep(probs, labels), rel=RTOL)
    assert nce(probs, labels) == pytest.approx(ref_nce(probs, labels), rel=RTOL)
