"""Linear probe: held-out balanced accuracy of a logistic regression on the standardised features."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from medxfer.scores._subsample import check_int_option, check_seed
from medxfer.scores.errors import ScoreError, ScoreWarning
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["linear_probe", "linear_probe_from_inputs"]


def linear_probe_from_inputs(
    inputs: ScoreInputs, *, test_size: float = 0.2, seed: int = 0, C: float = 1.0, max_iter: int = 1000
) -> float:
    """Linear-probe balanced accuracy of validated inputs (see :func:`linear_probe`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if isinstance(test_size, bool) or not isinstance(test_size, float) or not 0 < test_size < 1:
        raise ScoreError(f"linear_probe: option test_size must be a fraction in (0, 1), got {test_size!r}")
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not math.isfinite(C) or C <= 0:
        raise ScoreError(f"linear_probe: option C must be a positive number, got {C!r}")
    seed = check_seed("linear_probe", seed)
    max_iter = check_int_option("linear_probe", "max_iter", max_iter, 1)
    n, n_classes = inputs.n_samples, inputs.n_classes
    counts = np.bincount(inputs.codes, minlength=n_classes)
    if counts.min() < 2:
        lonely = [inputs.class_names[c] for c in np.flatnonzero(counts < 2)]
        raise ScoreError(
            f"linear_probe splits every class between training and test and needs at least 2 samples per class; "
            f"class(es) {lonely} have 1"
        )
    n_test = math.ceil(test_size * n)  # scikit-learn's rounding of a fractional test_size
    if n_test < n_classes or n - n_test < n_classes:
        raise ScoreError(
            f"linear_probe: N = {n} samples split {n - n_test} / {n_test} (test_size={test_size:g}) leave fewer "
            f"samples than the {n_classes} classes on one side; it needs more samples"
        )
    train, test = train_test_split(np.arange(n), test_size=test_size, stratify=inputs.codes, random_state=seed)
    features = inputs.raw_features
    train_features = np.asarray(features[train], dtype=np.float64)
    scaler = StandardScaler().fit(train_features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(
            scaler.transform(train_features), inputs.codes[train]
        )
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        warnings.warn(
            f"linear_probe: the logistic regression did not converge in max_iter={max_iter} L-BFGS iterations; "
            "the last iterate is used (raise max_iter)",
            ScoreWarning,
            stacklevel=3,
        )
    predicted = classifier.predict(scaler.transform(np.asarray(features[test], dtype=np.float64)))
    truth = inputs.codes[test]
    recalls = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return float(np.mean(recalls))


def linear_probe(
    features: Any,
    labels: Any,
    *,
    device: Any = None,
    test_size: float = 0.2,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    r"""Linear-probe balanced accuracy (a baseline, no paper): how well a linear classifier trained on the
    features predicts held-out labels.

    The samples are split 80 / 20 (``test_size``) by ``sklearn.model_selection.train_test_split(...,
    stratify=labels, random_state=seed)`` (``seed`` 0); the features are standardised with a
    ``StandardScaler`` fitted on the training part; a ``LogisticRegression(C=1.0, solver="lbfgs",
    max_iter=1000)`` (multinomial, L2; ``C``, ``max_iter`` options) is fitted on it; the score is the balanced
    accuracy on the held-out part,

    .. math::
        \frac{1}{|\mathcal C_{test}|}\sum_{c \in \mathcal C_{test}}
        \frac{\#\{i \in test : y_i = c,\ \hat y_i = c\}}{\#\{i \in test : y_i = c\}}

    (the mean recall over the classes present in the test part, scikit-learn's ``balanced_accuracy_score``),
    the study's target metric.  Higher is better.  Raises :class:`ScoreError` when a class has fewer than 2
    samples or either part would have fewer samples than there are classes; warns (:class:`ScoreWarning`)
    when L-BFGS stops at ``max_iter``.  Runs on the CPU whatever ``device``.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar in [0, 1].
    """
    return _single_score(
        "linear_probe", features, labels, device=device, test_size=test_size, seed=seed, C=C, max_iter=max_iter
    )


register_score("linear_probe", linear_probe_from_inputs, default=False)
