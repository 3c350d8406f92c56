"""SFDA: self-challenging Fisher discriminant analysis (regularized FDA, ConfMix, FDA again)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

if TYPE_CHECKING:
    import torch

__all__ = ["SHRINKAGE_FLOOR", "sfda", "sfda_from_inputs"]

SHRINKAGE_FLOOR = 1e-10
POWER_ITERATIONS = 3


def _largest_eigenvalue_estimate(matrix: "torch.Tensor") -> float:
    """The paper's ``iterative_A``: 3 double steps of the power method started from the row sums."""
    import torch

    x = matrix.sum(dim=1)
    y = x
    for _ in range(POWER_ITERATIONS):
        t = matrix @ x
        norm = torch.linalg.vector_norm(t)
        if not bool(norm > 0):
            raise ScoreError(
                "SFDA: the power iteration that sets the shrinkage reached a zero vector (the within-class "
                "scatter's row sums are zero); the features are degenerate"
            )
        y = t / norm
        t = matrix @ y
        x = t / torch.linalg.vector_norm(t)
    return float(x @ (matrix @ y))


def _fisher_probabilities(
    x: "torch.Tensor", inputs: ScoreInputs, shrinkage: float | None
) -> tuple["torch.Tensor", "torch.Tensor", float]:
    """Posteriors of the shrinkage-regularised LDA classifier fitted on (and applied to) the rows of ``x``.

    Returns (log-probabilities (N, C), class means (C, D), shrinkage).
    """
    import torch

    from medxfer.scores._linalg import gram

    n, d = x.shape
    codes, counts = inputs.codes_tensor, inputs.counts_tensor
    means = torch.zeros((inputs.n_classes, d), dtype=x.dtype, device=x.device).index_add_(0, codes, x)
    means /= counts[:, None]
    within = gram(x - means[codes]) / n  # sum_c prior_c * (biased) covariance of class c
    mu = float(within.diagonal().sum()) / d
    if not mu > 0:
        raise ScoreError("SFDA: every class is a single point (zero within-class scatter); SFDA is undefined")
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _largest_eigenvalue_estimate(within)), SHRINKAGE_FLOOR)
    regularised = (1.0 - shrinkage) * within
    regularised.diagonal().add_(shrinkage * mu)
    factor, info = torch.linalg.cholesky_ex(regularised)
    if int(info) != 0:
        raise ScoreError(
            f"SFDA: the regularised within-class scatter is not positive definite (shrinkage {shrinkage:.3g}); "
            "the features are too degenerate"
        )
    # coef = means @ (S_w)^-1, which the paper's code forms as means @ evecs @ evecs.T from eigh(S_b, S_w)
    coef_t = torch.cholesky_solve(means.T.contiguous(), factor)  # (D, C)
    intercept = -0.5 * (means * coef_t.T).sum(dim=1) + torch.log(counts / n)
    logits = x @ coef_t + intercept
    return torch.log_softmax(logits, dim=1), means, shrinkage


def sfda_from_inputs(inputs: ScoreInputs, *, log_prob: bool = False) -> float:
    """SFDA of validated inputs (see :func:`sfda`)."""
    import torch

    if not isinstance(log_prob, bool):
        raise ScoreError(f"sfda: option log_prob must be True or False, got {log_prob!r}")
    # SFDA is invariant to translations of the features: centred features lose fewer digits
    x = inputs.centred
    codes = inputs.codes_tensor
    log_probs, means, shrinkage = _fisher_probabilities(x, inputs, None)
    # "soften the probability": a softmax of the probabilities themselves
    softened = torch.softmax(torch.exp(log_probs), dim=1)
    confidence = softened.gather(1, codes[:, None])  # (N, 1)
    others = (means.sum(dim=0, keepdim=True) - means) / (inputs.n_classes - 1)  # mean of the other classes' means
    mixed = confidence * x + (1.0 - confidence) * others[codes]  # ConfMix
    log_probs, _, _ = _fisher_probabilities(mixed, inputs, shrinkage)
    true_class = log_probs.gather(1, codes[:, None])[:, 0]
    return float(true_class.mean() if log_prob else torch.exp(true_class).mean())


def sfda(features: Any, labels: Any, *, device: Any = None, log_prob: bool = False) -> float:
    r"""SFDA of Shao et al., *Not All Models Are Equal: Predicting Model Transferability in a Self-challenging
    Fisher Space* (ECCV 2022), as in the paper's code (``SFDA_Score`` of ``TencentARC/SFDA``).

    1. Regularised FDA: with class priors :math:`\pi_c = n_c / N`, class means :math:`m_c` and the within-class
       scatter :math:`S_w = \sum_c \pi_c \Sigma_c` (biased class covariances), the shrinkage is
       :math:`\lambda = \max(e^{-5\sigma}, 10^{-10})`, :math:`\sigma` the paper's estimate of the largest
       eigenvalue of :math:`S_w` (3 double steps of the power method from its row sums), and
       :math:`\tilde S_w = (1-\lambda) S_w + \lambda \tfrac{\operatorname{tr} S_w}{D} I`.  The Fisher-space
       classifier is :math:`p(y=c\mid x) = \operatorname{softmax}_c\left(x^\top \tilde S_w^{-1} m_c -
       \tfrac12 m_c^\top \tilde S_w^{-1} m_c + \log\pi_c\right)` (the code projects on every generalized
       eigenvector of :math:`(S_b, \tilde S_w)`, so :math:`\mathrm{evecs}\,\mathrm{evecs}^\top =
       \tilde S_w^{-1}`; here a Cholesky solve).
    2. Self-challenging ConfMix: :math:`q_i = \operatorname{softmax}(p(\cdot\mid x_i))_{y_i}` (a softmax of the
       probabilities, "softened"), :math:`x_i \leftarrow q_i x_i + (1 - q_i)\,\bar m_{y_i}`, with
       :math:`\bar m_c` the unweighted mean of the other classes' means.
    3. The regularised FDA again on the mixed features (same :math:`\lambda`), and

    .. math::
        \mathrm{SFDA} = \frac1N \sum_i p(y_i \mid x_i).

    The paper writes the mean *log*-probability; its code drops the logarithm "in case of instability" and the
    published numbers use the code, so the code's mean probability is the default; ``log_prob=True`` gives
    :math:`\frac1N\sum_i \log p(y_i\mid x_i)`.  Higher is better.  Invariant to translations of the features
    (computed on centred features).

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar in (0, 1] (``log_prob``: <= 0).
    """
    return _single_score("sfda", features, labels, device=device, log_prob=log_prob)


register_score("sfda", sfda_from_inputs, default=False)
