"""Input checks, fallbacks, the registry and the compute_scores contract."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import medxfer.scores as scores
from medxfer.scores import (
    REGISTRY,
    ScoreError,
    ScoreInputs,
    ScoreWarning,
    available_scores,
    compute_scores,
    gbc,
    hscore,
    leep,
    logme,
    nleep,
    register_score,
)
from scores_reference import limit_threads_for_small_problems, synthetic_scores_data

PAPER_SCORES = ("hscore", "reg_hscore", "nce", "leep", "nleep", "logme", "gbc")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with limit_threads_for_small_problems():
        yield


@pytest.fixture(scope="module")
def data():
    return synthetic_scores_data(120, 10, 3, 6, seed=0, latent=4, separation=1.0, dtype=np.float64)


def test_the_paper_scores_are_registered_in_order():
    assert available_scores()[: len(PAPER_SCORES)] == PAPER_SCORES
    assert not REGISTRY["hscore"].needs_probs and REGISTRY["leep"].needs_probs and REGISTRY["nce"].needs_probs
    for name in PAPER_SCORES:
        doc = getattr(scores, name).__doc__
        assert "Shape:" in doc and "better" in doc and ("ICML" in doc or "CVPR" in doc or "ICCV" in doc
                                                        or "ICIP" in doc or "ECML" in doc), name


def test_compute_scores_returns_finite_python_floats_and_timings(data):
    features, labels, probs = data
    timings: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)
        values = compute_scores(features, labels, probs, timings=timings)
    assert list(values) == list(available_scores())
    assert all(type(v) is float and math.isfinite(v) for v in values.values())
    assert set(timings) == set(values) and all(t >= 0 for t in timings.values())


def test_names_select_and_order_scores(data):
    features, labels, probs = data
    values = compute_scores(features, labels, names=["logme", "hscore"])
    assert list(values) == ["logme", "hscore"]
    assert compute_scores(features, labels, names="hscore") == {"hscore": values["hscore"]}


def test_scores_needing_probs_without_probs_raise(data):
    features, labels, _ = data
    with pytest.raises(ScoreError, match=r"\['nce', 'leep'\] need probs"):
        compute_scores(features, labels)
    with pytest.raises(ScoreError, match="unknown score name"):
        compute_scores(features, labels, names=["hscore", "not_a_score"])


def test_register_score_plugs_a_new_score_in(data):
    features, labels, probs = data

    def class_count(inputs: ScoreInputs) -> float:
        return float(inputs.n_classes)

    register_score("class_count_for_test", class_count)
    try:
        assert "class_count_for_test" in available_scores()
        assert compute_scores(features, labels, names=["class_count_for_test"]) == {"class_count_for_test": 3.0}
        with pytest.raises(ValueError, match="already registered"):
            register_score("class_count_for_test", class_count)
    finally:
        REGISTRY.pop("class_count_for_test")


def test_a_score_that_returns_nan_is_an_error_not_a_value(data):
    features, labels, _ = data
    register_score("nan_for_test", lambda inputs: float("nan"))
    try:
        with pytest.raises(ScoreError, match=r"'nan_for_test' is undefined on these inputs \(it came out nan\)"):
            compute_scores(features, labels, names=["nan_for_test"])
    finally:
        REGISTRY.pop("nan_for_test")


@pytest.mark.parametrize("bad, message", [(np.nan, r"3 NaN values \(first at row 17, column 4\)"),
                                          (np.inf, r"3 infinite values \(first at row 17, column 4\)")])
def test_non_finite_features_are_reported_with_their_position(data, bad, message):
    features, labels, probs = data
    features = features.copy()
    features[17, 4] = features[30, 1] = features[99, 9] = bad
    with pytest.raises(ScoreError, match=message):
        compute_scores(features, labels, probs)
    with pytest.raises(ScoreError, match=message):
        hscore(features.astype(np.float32), labels)


def test_non_finite_and_unnormalised_probs_are_reported(data):
    features, labels, probs = data
    broken = probs.copy()
    broken[5] *= 0.73
    with pytest.raises(ScoreError, match=r"probs row 5 sums to 0\.73, expected 1 \(tolerance 0\.001\)"):
        leep(broken, labels)
    broken = probs.copy()
    broken[2, 3] = np.nan
    with pytest.raises(ScoreError, match=r"probs contain 1 NaN value \(first at row 2, column 3\)"):
        compute_scores(features, labels, broken, names=["nce"])
    with pytest.raises(ScoreError, match="not logits"):
        leep(np.log(probs), labels)
    # a small rounding error is accepted as given
    assert math.isfinite(leep(probs * (1 + 1e-5), labels))


def test_label_problems_are_reported(data):
    features, labels, _ = data
    single = r"only one class present \('benign'\); transferability scores need at least 2"
    with pytest.raises(ScoreError, match=single):
        hscore(features, np.array(["benign"] * len(features)))
    with pytest.raises(ScoreError, match="labels have 119 entries but features have 120 rows"):
        hscore(features, labels[:-1])
    missing = labels.astype(float)
    missing[7] = np.nan
    with pytest.raises(ScoreError, match="missing value.*first at row 7"):
        logme(features, missing)
    with pytest.raises(ScoreError, match="missing value"):
        logme(features, [None if i == 3 else "a" if i % 2 else "b" for i in range(len(features))])


def test_unsortable_labels_are_encoded_by_first_appearance(data):
    features, labels, _ = data
    mixed = np.array([1, "one", 2.5], dtype=object)[labels]
    assert hscore(features, mixed) == pytest.approx(hscore(features, labels), rel=1e-12)


def test_feature_shape_and_dtype_problems_are_reported(data):
    features, labels, _ = data
    with pytest.raises(ScoreError, match="2-D"):
        hscore(features[:, 0], labels)
    with pytest.raises(ScoreError, match="real-valued"):
        hscore(features.astype(object), labels)
    with pytest.raises(ScoreError, match="at least 2 samples"):
        hscore(features[:1], labels[:1])


def test_nleep_needs_five_samples_per_component_class(data):
    features, labels, _ = data
    few = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(3)])
    with pytest.raises(ScoreError, match=r"N-LEEP fits 5 x C = 15 Gaussians and needs at least 15 samples, got 12"):
        nleep(features[few], labels[few])


def test_nleep_accepts_float32_features(data):
    features, labels, _ = data
    assert nleep(features.astype(np.float32), labels) == pytest.approx(nleep(features, labels), rel=1e-5, abs=1e-9)


def test_constant_features_give_finite_scores_or_a_clear_error():
    labels = np.repeat([0, 1, 2], 20)
    features = np.ones((60, 5))
    values = compute_scores(features, labels, names=["hscore", "reg_hscore", "logme"])
    assert all(math.isfinite(v) for v in values.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)
        assert math.isfinite(gbc(features, labels))
    with pytest.raises(ScoreError, match="constant"):
        nleep(features, labels)


def test_duplicated_samples_do_not_produce_nan():
    """Fewer distinct points than mixture components: a warning or an error, never NaN."""
    rng = np.random.default_rng(1)
    features = np.repeat(rng.normal(size=(6, 3)), 10, axis=0)
    labels = np.tile([0, 1], 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)
        try:
            value = nleep(features, labels)
        except ScoreError as err:
            assert "N-LEEP" in str(err)
        else:
            assert math.isfinite(value)


def test_gbc_with_few_samples_warns_and_stays_finite(data):
    features, labels, _ = data
    with pytest.warns(ScoreWarning, match="GBC uses 9 PCA components instead of 64"):
        value = gbc(features[:10], np.arange(10) % 2)
    assert math.isfinite(value)


def test_torch_inputs_are_accepted(data):
    import torch

    features, labels, probs = data
    expected = compute_scores(features, labels, probs, names=["hscore", "leep"])
    actual = compute_scores(torch.from_numpy(features), torch.from_numpy(labels), torch.from_numpy(probs),
                            names=["hscore", "leep"])
    assert actual == pytest.approx(expected, rel=1e-12)


def test_unavailable_device_is_a_clear_error(data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    features, labels, _ = data
    with pytest.raises(ScoreError, match="no CUDA device"):
        hscore(features, labels, device="cuda")


def test_cuda_matches_cpu(data):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    features, labels, probs = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)
        cpu = compute_scores(features, labels, probs)
        cuda = compute_scores(features, labels, probs, device="cuda")
    assert cuda == pytest.approx(cpu, rel=1e-8, abs=1e-12)


def test_importing_the_package_loads_neither_torch_nor_scikit_learn():
    code = "import sys, medxfer.scores; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_torch_thread_setting_is_restored(data):
    import torch

    from medxfer.scores._linalg import threads_for_synchronised_work

    features, labels, _ = data
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads_for_synchronised_work(torch.device("cpu")) in (1, 2)
        compute_scores(features, labels, names=["hscore", "nleep"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_failures_dict_records_a_failing_score_and_keeps_the_others(data, monkeypatch):
    import dataclasses

    features, labels, probs = data
    calls = []
    real_eigh = scores.inputs.eigh_descending

    def counting_eigh(*args, **kwargs):
        calls.append(1)
        return real_eigh(*args, **kwargs)

    def broken(inputs, **options):
        raise ScoreError("degenerate on purpose")

    monkeypatch.setattr(scores.inputs, "eigh_descending", counting_eigh)
    monkeypatch.setitem(scores.REGISTRY, "nce", dataclasses.replace(scores.REGISTRY["nce"], fn=broken))
    failures = {}
    values = compute_scores(features, labels, probs, ["hscore", "nce", "logme", "gbc"], failures=failures)
    assert failures == {"nce": "degenerate on purpose"} and list(values) == ["hscore", "logme", "gbc"]
    assert len(calls) == 1  # one covariance eigendecomposition served the scores around the failure
    assert values["logme"] == compute_scores(features, labels, probs, ["logme"])["logme"]
    with pytest.raises(ScoreError, match="degenerate on purpose"):  # without the dict, the first failure raises
        compute_scores(features, labels, probs, ["hscore", "nce"])
