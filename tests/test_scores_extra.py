"""The opt-in scores (SFDA, PARC, TransRate, ETran, PACTran, k-NN, linear probe, ImageNet top-1), score options,
extras and N-LEEP over several seeds, against the literal ports in tests/scores_reference.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import medxfer.scores as scores
from medxfer.scores import (
    REGISTRY,
    ScoreError,
    ScoreResult,
    ScoreWarning,
    available_scores,
    compute_scores,
    etran,
    imagenet_top1,
    knn,
    linear_probe,
    nleep,
    pactran,
    parc,
    register_score,
    sfda,
    transrate,
)
from medxfer.scores._subsample import stratified_subsample
from scores_reference import (
    EXTRA_REFERENCE_SCORES,
    limit_threads_for_small_problems,
    ref_knn,
    ref_nleep_seeds,
    ref_parc,
    ref_sfda,
    ref_stratified_subsample,
    synthetic_scores_data,
)

# Worst relative difference measured on these cases: 1e-14 (PARC); k-NN, the linear probe and ETran agree
# exactly.  The test asks for 1e-9.  (PACTran's 100 L-BFGS iterations amplify rounding on larger inputs:
# 5e-9 at N = 3000, D = 1280 in benchmarks/scores.py --extra.)
RTOL = 1e-9
ATOL = 1e-12
PAPER_SCORES = ("hscore", "reg_hscore", "nce", "leep", "nleep", "logme", "gbc")
ARRAY_SCORES = ["sfda", "parc", "transrate", "etran", "pactran", "knn", "linear_probe"]
OPT_IN = (*ARRAY_SCORES, "imagenet_top1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with limit_threads_for_small_problems():
        yield


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def as_strings(codes: np.ndarray) -> np.ndarray:
    return np.array(["nevus", "melanoma", "keratosis", "carcinoma", "lentigo", "dermatofibroma", "vascular",
                     "squamous"])[codes]


CASES = {
    # name: (n, d, c, seed, dtype, feature scale, string labels)
    "float64, N > D": (300, 24, 3, 0, np.float64, 1.0, False),
    "float32, N > D, ISIC-like 8 classes, strings": (400, 40, 8, 1, np.float32, 1.0, True),
    # SFDA's shrinkage exp(-5 sigma) depends on the feature scale: at 0.1 it is not at its 1e-10 floor, so
    # with N < D the Fisher classifier does not fit the samples perfectly and SFDA stays below 1
    "N < D, strings": (48, 80, 3, 2, np.float64, 0.1, True),
    "N < D, float32": (60, 90, 2, 3, np.float32, 0.1, False),
}


def case_data(case):
    n, d, c, seed, dtype, scale, strings = CASES[case]
    features, codes, probs = synthetic_scores_data(n, d, c, 6, seed=seed, latent=8, separation=0.5, dtype=dtype)
    features = (features * scale).astype(dtype)
    return features, (as_strings(codes) if strings else codes), probs


@pytest.mark.parametrize("case", list(CASES))
def test_opt_in_scores_match_reference(case):
    features, labels, probs = case_data(case)
    extras: dict = {}
    actual = quiet(compute_scores, features, labels, probs, names=ARRAY_SCORES, extras=extras)
    for name in ARRAY_SCORES:
        expected = quiet(EXTRA_REFERENCE_SCORES[name], features, labels, probs)
        assert type(actual[name]) is float and math.isfinite(actual[name]), name
        assert actual[name] == pytest.approx(expected, rel=RTOL, abs=ATOL), name
    assert 0 < actual["sfda"] < 1  # not saturated: the comparison means something
    assert sfda(features, labels, log_prob=True) == pytest.approx(ref_sfda(features, labels, log_prob=True),
                                                                   rel=RTOL, abs=ATOL)
    n = len(labels)
    assert extras["parc"] == {"n_samples": float(n), "seed": 0.0}
    assert extras["knn"] == {"n_samples": float(n), "seed": 0.0}
    assert set(extras) == {"parc", "knn", "pactran"}  # pactran reports its L-BFGS iterations


@pytest.mark.filterwarnings("ignore::medxfer.scores.ScoreWarning")
def test_public_functions_equal_compute_scores_with_options():
    features, labels, probs = case_data("float64, N > D")
    options = {
        "sfda": {"log_prob": True},
        "parc": {"n_dims": 8, "max_samples": 200, "seed": 3},
        "transrate": {"eps": 1e-3},
        "etran": {"percent": 10.0},
        "pactran": {"lda_factor": 10.0, "max_iter": 20},
        "knn": {"k": 3, "metric": "euclidean", "max_samples": 250, "seed": 1},
        "linear_probe": {"test_size": 0.3, "seed": 2, "C": 0.5},
        "imagenet_top1": {"top1": 76.13},
    }
    together = compute_scores(features, labels, names=list(options), options=options)
    one_by_one = {name: getattr(scores, name)(features, labels, **options[name]) for name in options}
    assert together == one_by_one
    for name in ARRAY_SCORES:  # the options really reach the score
        assert together[name] != compute_scores(features, labels, names=[name])[name], name
        assert together[name] == pytest.approx(
            quiet(EXTRA_REFERENCE_SCORES[name], features, labels, probs, **options[name]), rel=RTOL, abs=ATOL
        ), name
    assert together["imagenet_top1"] == 76.13


def test_opt_in_scores_are_registered_documented_and_off_by_default():
    assert available_scores() == PAPER_SCORES
    assert available_scores(include_opt_in=True) == PAPER_SCORES + OPT_IN
    for name in OPT_IN:
        spec = REGISTRY[name]
        assert not spec.default and not spec.needs_probs
        doc = getattr(scores, name).__doc__
        assert "Shape:" in doc and "better" in doc, name
    for name, venue in [("sfda", "ECCV 2022"), ("parc", "NeurIPS 2021"), ("transrate", "ICML 2022"),
                        ("etran", "ICCV 2023"), ("pactran", "ECCV 2022")]:
        assert venue in getattr(scores, name).__doc__
    features, labels, probs = case_data("float64, N > D")
    assert list(quiet(compute_scores, features, labels, probs)) == list(PAPER_SCORES)


# -- options -------------------------------------------------------------------------------------------------


def test_bad_options_are_reported_with_the_accepted_ones():
    features, labels, _ = case_data("float64, N > D")
    with pytest.raises(ScoreError, match=r"score 'knn' has no option\(s\) \['neighbours'\]; it accepts: k, metric, "
                                         r"max_samples, seed"):
        compute_scores(features, labels, names=["knn"], options={"knn": {"neighbours": 3}})
    with pytest.raises(ScoreError, match=r"options given for unknown score name\(s\) \['sfdaa'\]"):
        compute_scores(features, labels, names=["sfda"], options={"sfdaa": {"log_prob": True}})
    with pytest.raises(ScoreError, match=r"score 'hscore' has no option\(s\) \['rcond'\]; it takes no options"):
        compute_scores(features, labels, names=["hscore"], options={"hscore": {"rcond": 1e-10}})
    with pytest.raises(ScoreError, match="options must map score names"):
        compute_scores(features, labels, names=["knn"], options=[("knn", {"k": 3})])
    # options of a registered score that is not computed are checked, then ignored
    with pytest.raises(ScoreError, match=r"'parc' has no option\(s\) \['dims'\]"):
        compute_scores(features, labels, names=["hscore"], options={"parc": {"dims": 8}})
    assert compute_scores(features, labels, names=["hscore"], options={"parc": {"n_dims": 8}}) == compute_scores(
        features, labels, names=["hscore"]
    )


@pytest.mark.parametrize("name, options, message", [
    ("knn", {"k": 0}, "knn: option k must be >= 1"),
    ("knn", {"k": 2.5}, "knn: option k must be an integer"),
    ("knn", {"metric": "manhattan"}, "knn: option metric must be one of cosine, euclidean"),
    ("parc", {"seed": -1}, "parc: option seed must be >= 0"),
    ("parc", {"max_samples": True}, "parc: option max_samples must be an integer"),
    ("transrate", {"eps": 0.0}, "transrate: option eps must be a positive number"),
    ("etran", {"percent": 0}, r"etran: option percent must be a number in \(0, 100\]"),
    ("pactran", {"lda_factor": -1.0}, "pactran: option lda_factor must be a positive number"),
    ("sfda", {"log_prob": "yes"}, "sfda: option log_prob must be True or False"),
    ("linear_probe", {"test_size": 1.5}, r"linear_probe: option test_size must be a fraction in \(0, 1\)"),
    ("nleep", {"seeds": (1, 1)}, "nleep: option seeds must be one or more distinct integers"),
    ("nleep", {"seeds": ("a",)}, "nleep: option seeds must be integers"),
])
def test_bad_option_values_are_reported(name, options, message):
    features, labels, _ = case_data("float64, N > D")
    with pytest.raises(ScoreError, match=message):
        compute_scores(features, labels, names=[name], options={name: options})


def test_a_registered_score_may_report_extras():
    features, labels, _ = case_data("float64, N > D")

    def with_extras(inputs, *, offset: float = 0.0):
        return ScoreResult(float(inputs.n_classes) + offset, {"n_samples": inputs.n_samples})

    register_score("extras_for_test", with_extras, default=False)
    try:
        assert "extras_for_test" not in available_scores()
        extras: dict = {}
        values = compute_scores(features, labels, names=["extras_for_test", "hscore"],
                                options={"extras_for_test": {"offset": 0.5}}, extras=extras)
        assert values["extras_for_test"] == 3.5 and type(values["extras_for_test"]) is float
        assert extras == {"extras_for_test": {"n_samples": 300.0}}  # hscore reports none
    finally:
        REGISTRY.pop("extras_for_test")


# -- subsampling (PARC, k-NN) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("counts, max_samples, seed", [
    ((300, 120, 60, 20), 100, 0),
    ((300, 120, 60, 20), 100, 7),
    ((50, 50, 50), 100, 1),  # equal remainders: the permutation breaks the ties
    ((194, 138, 94, 74), 120, 5),  # equal remainders 0.56 that floating point would tell apart
    ((500, 3, 1, 2), 40, 2),  # tiny classes keep min(n_c, 2)
    ((400, 5, 5, 5, 5, 5), 20, 3),  # the floors exceed the quotas: the largest class gives back
])
def test_stratified_subsample_matches_its_reference(counts, max_samples, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[np.random.default_rng(seed + 100).permutation(len(labels))]
    chosen = stratified_subsample(labels, len(counts), max_samples, seed)
    assert len(chosen) == max_samples and len(set(chosen.tolist())) == max_samples
    assert np.array_equal(chosen, ref_stratified_subsample(labels, max_samples, seed))
    taken = np.bincount(labels[chosen], minlength=len(counts))
    assert (taken >= np.minimum(counts, 2)).all()
    if (np.minimum(counts, 2) <= np.asarray(counts) * max_samples / len(labels)).all():
        assert (np.abs(taken - np.asarray(counts) * max_samples / len(labels)) < 1).all()
    # the draw does not depend on how the classes are named
    renamed = np.array([3, 0, 5, 1, 4, 2])[labels]
    assert np.array_equal(stratified_subsample(np.unique(renamed, return_inverse=True)[1], len(counts),
                                               max_samples, seed), chosen)


@pytest.mark.filterwarnings("ignore::medxfer.scores.ScoreWarning")
def test_subsampling_scores_report_their_sample_and_are_seeded():
    features, codes, _ = synthetic_scores_data(500, 20, 4, 4, seed=11, latent=6, separation=0.5)
    labels = as_strings(codes)
    for name, reference in [("parc", ref_parc), ("knn", ref_knn)]:
        values, extras = [], []
        for seed in (0, 0, 5):
            reported: dict = {}
            values.append(compute_scores(features, labels, names=[name], extras=reported,
                                         options={name: {"max_samples": 120, "seed": seed}})[name])
            extras.append(reported[name])
        assert values[0] == values[1] != values[2], name
        assert extras == [{"n_samples": 120.0, "seed": 0.0}] * 2 + [{"n_samples": 120.0, "seed": 5.0}], name
        assert values[2] == pytest.approx(reference(features, labels, max_samples=120, seed=5), rel=RTOL), name
        # N <= max_samples: every sample, whatever the seed
        reported = {}
        full = compute_scores(features, labels, names=[name], extras=reported, options={name: {"seed": 9}})[name]
        assert reported[name] == {"n_samples": 500.0, "seed": 9.0}
        assert full == compute_scores(features, labels, names=[name])[name], name


def test_subsample_needs_room_for_two_samples_per_class():
    features, labels, _ = synthetic_scores_data(100, 10, 4, 4, seed=1, latent=4)
    with pytest.raises(ScoreError, match="max_samples=5 cannot keep 2 samples of each of the 4 classes"):
        knn(features, labels, max_samples=5)


# -- N-LEEP over several seeds --------------------------------------------------------------------------------


def test_nleep_seeds_give_mean_and_sample_std():
    features, labels, _ = synthetic_scores_data(200, 12, 3, 4, seed=12, latent=6, separation=0.6)
    extras: dict = {}
    default = quiet(compute_scores, features, labels, names=["nleep"], extras=extras)["nleep"]
    assert extras == {}
    assert quiet(nleep, features, labels, seeds=(42,)) == default  # bit for bit the single-seed default
    assert quiet(nleep, features, labels, seeds=42) == default
    several = quiet(compute_scores, features, labels, names=["nleep"], extras=extras,
                    options={"nleep": {"seeds": [0, 1, 2]}})["nleep"]
    mean, std = quiet(ref_nleep_seeds, features, labels, (0, 1, 2))
    assert several == pytest.approx(mean, rel=1e-6)
    assert extras["nleep"]["n_seeds"] == 3.0
    assert extras["nleep"]["std"] == pytest.approx(std, rel=1e-6) and std > 0
    singles = [quiet(nleep, features, labels, seeds=(s,)) for s in (0, 1, 2)]
    assert several == pytest.approx(np.mean(singles), rel=1e-12)
    assert extras["nleep"]["std"] == pytest.approx(np.std(singles, ddof=1), rel=1e-9)


# -- ImageNet top-1 -------------------------------------------------------------------------------------------


def test_imagenet_top1_returns_the_given_accuracy_or_says_what_to_set():
    features, labels, _ = case_data("float64, N > D")
    assert imagenet_top1(features, labels, top1=80.3) == 80.3
    assert compute_scores(features, labels, names=["imagenet_top1"],
                          options={"imagenet_top1": {"top1": 69}}) == {"imagenet_top1": 69.0}
    message = r"the model config's imagenet_top1 is not set: set model\.imagenet_top1=<percent>"
    with pytest.raises(ScoreError, match=message):
        compute_scores(features, labels, names=["imagenet_top1"])
    with pytest.raises(ScoreError, match=message):
        imagenet_top1(features, labels, top1=None)
    with pytest.raises(ScoreError, match="in percent, 0 to 100, got 176.1"):
        imagenet_top1(features, labels, top1=176.1)


# -- direction: well-separated classes score above random features --------------------------------------------


def test_separated_features_score_higher_than_random_features():
    rng = np.random.default_rng(21)
    n, d, c = 240, 30, 3
    labels = np.repeat(np.arange(c), n // c)
    noise = rng.normal(size=(n, d))
    centres = np.zeros((c, d))
    centres[np.arange(c), np.arange(c)] = 4.0  # positive offsets: also more energy for ETran's label-free score
    separated = noise + centres[labels]
    shuffled = separated[rng.permutation(n)]  # same features, labels now random
    for name in ARRAY_SCORES:
        good = quiet(compute_scores, separated * 0.3, labels, names=[name])[name]
        if name == "etran":  # ignores the labels: more energetic (confident) features are better
            bad = quiet(compute_scores, noise * 0.3, labels, names=[name])[name]
        else:
            bad = quiet(compute_scores, shuffled * 0.3, labels, names=[name])[name]
        assert good > bad, (name, good, bad)


# -- degenerate inputs ------------------------------------------------------------------------------------------


def test_degenerate_inputs_raise_clear_errors():
    features, labels, _ = synthetic_scores_data(60, 8, 3, 4, seed=13, latent=4)
    lonely = labels.astype(object)
    lonely[0] = "singleton"
    with pytest.raises(ScoreError, match=r"linear_probe .* needs at least 2 samples per class; class\(es\) "
                                         r"\['singleton'\] have 1"):
        linear_probe(features, lonely)
    with pytest.raises(ScoreError, match=r"k-NN leave-one-out needs at least 2 samples per class"):
        knn(features, lonely)
    few = np.concatenate([np.flatnonzero(labels == k)[:3] for k in range(3)])
    with pytest.raises(ScoreError, match=r"linear_probe: N = 9 samples split 7 / 2 .* fewer samples than the 3"):
        linear_probe(features[few], labels[few])
    with pytest.raises(ScoreError, match="k-NN with k=9 needs more than k samples, got 9"):
        knn(features[few], labels[few], k=9)
    with pytest.raises(ScoreError, match="PARC needs a class with at least 2 samples"):
        parc(features[:4], np.arange(4))
    with pytest.raises(ScoreError, match="SFDA: every class is a single point"):
        sfda(np.repeat(features[:3], 5, axis=0), np.repeat(np.arange(3), 5))
    # defined on one sample per class: TransRate, ETran, PACTran
    assert all(math.isfinite(f(features[:3], np.arange(3))) for f in (transrate, pactran))


def test_parc_with_fewer_than_32_dimensions_warns_and_matches_reference():
    features, labels, _ = case_data("float64, N > D")  # D = 24
    with pytest.warns(ScoreWarning, match="PARC uses 24 principal components instead of 32: only N - 1 = 299 and "
                                          "D = 24 are available"):
        value = parc(features, labels)
    assert value == pytest.approx(ref_parc(features, labels), rel=RTOL)


def test_etran_on_fewer_than_200_samples_uses_the_lowest_sample_and_warns():
    features, labels, _ = case_data("float64, N > D")
    with pytest.warns(ScoreWarning, match="lowest 0.5 % of the samples, none of N = 150"):
        value = etran(features[:150], labels[:150])
    assert value == pytest.approx(EXTRA_REFERENCE_SCORES["etran"](features[:150], labels[:150], None), rel=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(etran(features, labels))  # N = 300: one sample, no warning


def test_linear_probe_that_does_not_converge_warns():
    features, labels, _ = case_data("float32, N > D, ISIC-like 8 classes, strings")
    with pytest.warns(ScoreWarning, match="did not converge in max_iter=2 L-BFGS iterations"):
        value = linear_probe(features, labels, max_iter=2)
    assert 0 <= value <= 1


def test_cuda_matches_cpu_for_the_torch_scores():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    features, labels, _ = case_data("float32, N > D, ISIC-like 8 classes, strings")
    names = ["sfda", "transrate", "pactran"]  # the others run on the CPU whatever the device
    cpu = quiet(compute_scores, features, labels, names=names)
    cuda = quiet(compute_scores, features, labels, names=names, device="cuda")
    assert cuda == pytest.approx(cpu, rel=1e-6)
