"""LEEP: log expected empirical prediction, from source-head probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["leep", "leep_from_inputs", "leep_from_posteriors"]

LEEP_BLOCK_ROWS = 2048


def leep_from_posteriors(posteriors: np.ndarray, codes: np.ndarray, n_classes: int) -> float:
    """LEEP of (N, S) posteriors p(z|x) (float32 or float64, computed in float64) against codes in 0..C-1.

    P(y|z) is the empirical joint sum_n p(z|x_n) [y_n = y] / N normalised over y.  A source class that gets
    no probability mass at all has no P(y|z); it is left out (its p(z|x) is zero for every sample, so it
    contributes nothing), where the paper's code would divide 0 by 0 and return NaN.
    """
    n = posteriors.shape[0]
    # row blocks converted to float64 one at a time: float32 input never needs a full float64 copy
    blocks = [slice(start, min(start + LEEP_BLOCK_ROWS, n)) for start in range(0, n, LEEP_BLOCK_ROWS)]
    joint = np.zeros((n_classes, posteriors.shape[1]))
    for rows in blocks:
        one_hot = np.zeros((rows.stop - rows.start, n_classes))
        one_hot[np.arange(rows.stop - rows.start), codes[rows]] = 1.0
        joint += one_hot.T @ np.asarray(posteriors[rows], dtype=np.float64)
    joint /= float(n)  # P(y, z), (C, S)
    marginal = joint.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        conditional = np.where(marginal > 0, joint / marginal, 0.0)  # P(y | z), (C, S)
    expected = np.empty(n)  # sum_z p(z|x_n) P(y_n|z)
    for rows in blocks:
        block = np.asarray(posteriors[rows], dtype=np.float64) @ conditional.T
        expected[rows] = block[np.arange(rows.stop - rows.start), codes[rows]]
    if not (expected > 0).all():
        row = int(np.flatnonzero(~(expected > 0))[0])
        raise ScoreError(
            f"LEEP's expected empirical prediction is {expected[row]!r} for sample {row}; its source "
            "probabilities put no mass on any source class seen with its label"
        )
    return float(np.mean(np.log(expected)))


def leep_from_inputs(inputs: ScoreInputs) -> float:
    """LEEP of validated inputs (see :func:`leep`)."""
    return leep_from_posteriors(inputs.raw_probs, inputs.codes, inputs.n_classes)


def leep(probs: Any, labels: Any) -> float:
    r"""LEEP of Nguyen et al., *LEEP: A New Measure to Evaluate Transferability of Learned Representations*
    (ICML 2020).

    .. math::
        \mathcal{T} = \frac{1}{N}\sum_{n=1}^{N} \log \sum_{z} \hat P(y_n \mid z)\, \theta(x_n)_z,
        \qquad \hat P(y \mid z) = \frac{\hat P(y, z)}{\sum_{y'} \hat P(y', z)},\quad
        \hat P(y, z) = \frac{1}{N}\sum_{n: y_n = y} \theta(x_n)_z

    where :math:`\theta(x)` are the source head's probabilities.  Higher (closer to 0) is better.  Invariant to
    permutations of the source classes.

    Shape:
        - probs: (N, S) source-class probabilities, rows summing to 1 (tolerance 1e-3).
        - labels: (N,), any hashable values.
        - score: scalar, <= 0.
    """
    return _single_score("leep", None, labels, probs)


register_score("leep", leep_from_inputs, needs_probs=True)
