"""NCE: negative conditional entropy of the target labels given the source head's predicted class."""

from __future__ import annotations

from typing import Any

import numpy as np

from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["nce", "nce_from_inputs", "nce_from_source_labels"]


def nce_from_source_labels(source_labels: np.ndarray, codes: np.ndarray, n_classes: int) -> float:
    """-H(Y | Z) of the empirical joint of source labels z (any integers) and target codes y in 0..C-1.

    Empty cells count as 0 log 0 = 0; the paper's code adds 1e-20 inside the logarithm instead, which moves
    the value by less than 1e-17.
    """
    _, z = np.unique(np.asarray(source_labels), return_inverse=True)
    z = z.reshape(-1)
    n_sources = int(z.max()) + 1
    counts = np.bincount(z * n_classes + codes, minlength=n_sources * n_classes).reshape(n_sources, n_classes)
    n = float(len(codes))
    joint = counts / n  # P(z, y)
    marginal = joint.sum(axis=1, keepdims=True)  # P(z) > 0 for every z present
    present = counts > 0
    conditional = np.where(present, joint / marginal, 1.0)
    return float(np.sum(joint[present] * np.log(conditional[present])))


def nce_from_inputs(inputs: ScoreInputs) -> float:
    """NCE of validated inputs (see :func:`nce`)."""
    # argmax in the given precision: widening float32 to float64 is exact, so it picks the same class
    return nce_from_source_labels(np.argmax(inputs.raw_probs, axis=1), inputs.codes, inputs.n_classes)


def nce(probs: Any, labels: Any) -> float:
    r"""NCE of Tran et al., *Transferability and Hardness of Supervised Classification Tasks* (ICCV 2019).

    .. math::
        \mathrm{NCE} = -H(Y \mid Z) = \sum_{y, z} \hat P(y, z) \log \frac{\hat P(y, z)}{\hat P(z)}

    where :math:`z = \arg\max_s \theta(x)_s` is the source head's predicted class (first maximum on ties) and
    :math:`\hat P` the empirical joint distribution.  Higher (closer to 0) is better.  Invariant to
    permutations of the source classes.

    Shape:
        - probs: (N, S) source-class probabilities, rows summing to 1 (tolerance 1e-3).
        - labels: (N,), any hashable values.
        - score: scalar, <= 0.
    """
    return _single_score("nce", None, labels, probs)


register_score("nce", nce_from_inputs, needs_probs=True)
