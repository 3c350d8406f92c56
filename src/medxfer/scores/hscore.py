"""H-Score and its Ledoit-Wolf regularized variant, from one covariance eigendecomposition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

if TYPE_CHECKING:
    import torch

__all__ = ["hscore", "hscore_from_inputs", "ledoit_wolf_shrinkage", "reg_hscore", "reg_hscore_from_inputs"]

PINV_RCOND = 1e-15


def _between_class_trace(inputs: ScoreInputs, inverse_eigenvalues: "torch.Tensor") -> float:
    """tr(M cov E[f|y]) for M = V diag(inverse_eigenvalues) V^T, V the covariance eigenvectors.

    cov E[f|y] = sum_c n_c (m_c - m)(m_c - m)^T / (N - 1), so the trace is a weighted sum of squared
    projections of the centred class means: O(C D^2) instead of two D x D products.
    """
    _, vectors = inputs.cov_eigh
    centred_means = inputs.centred_class_sums / inputs.counts_tensor[:, None]
    projections = centred_means @ vectors  # (C, D)
    weighted = (projections**2 * inverse_eigenvalues).sum(dim=1)
    return float((inputs.counts_tensor * weighted).sum()) / (inputs.n_samples - 1)


def _pinv_inverse(eigenvalues: "torch.Tensor") -> "torch.Tensor":
    """1/lambda where |lambda| > rcond * max|lambda| and 0 elsewhere: ``np.linalg.pinv(rcond=1e-15)``."""
    import torch

    magnitude = eigenvalues.abs()
    keep = magnitude > PINV_RCOND * magnitude.max()
    return torch.where(keep, 1.0 / torch.where(keep, eigenvalues, torch.ones_like(eigenvalues)), 0.0)


def hscore_from_inputs(inputs: ScoreInputs) -> float:
    """H-Score of validated inputs (see :func:`hscore`)."""
    eigenvalues, _ = inputs.cov_eigh
    return _between_class_trace(inputs, _pinv_inverse(eigenvalues))


def hscore(features: Any, labels: Any, *, device: Any = None) -> float:
    r"""H-Score of Bao et al., *An Information-theoretic Approach to Transferability in Task Transfer Learning*
    (ICIP 2019).

    .. math::
        \mathcal{H} = \operatorname{tr}\left(\operatorname{cov}(f)^{+}\,
        \operatorname{cov}\left(\mathbb{E}[f \mid y]\right)\right)

    with ``np.cov`` covariances (N - 1 denominator) and the pseudo-inverse of ``np.linalg.pinv(rcond=1e-15)``,
    taken through the eigendecomposition of cov(f).  Higher is better.  Invariant to invertible linear maps
    of the features (up to the conditioning of the map).

    The pseudo-inverse keeps directions down to 1e-15 of the largest variance; a direction holding a fraction
    e of it is resolved to about 1e-16 / e relative, here as in NumPy's pinv, so two implementations agree to
    1e-6 only while the covariance's condition number stays below about 1e10 (post-ReLU features with rare
    units reach 1e8 and agree to 1e-14).

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar.
    """
    return _single_score("hscore", features, labels, device=device)


def ledoit_wolf_shrinkage(inputs: ScoreInputs) -> float:
    """Ledoit-Wolf shrinkage of ``sklearn.covariance.ledoit_wolf_shrinkage`` on the centred features.

    scikit-learn forms X^T X and (X**2)^T (X**2) block by block; only sums of their entries are needed:
    sum((X**2)^T X**2) = sum_n ||x_n||^4 and sum((X^T X)**2) = ||Xc^T Xc||_F^2, the latter from the shared
    Gram matrix.  One feature gives shrinkage 0, as in scikit-learn.
    """
    n, d = inputs.n_samples, inputs.n_features
    if d == 1:
        return 0.0
    import torch

    emp_cov_trace = inputs.centred_gram.diagonal() / n  # column sums of squares / N
    mu = float(emp_cov_trace.sum()) / d
    row_squares = torch.einsum("nd,nd->n", inputs.centred, inputs.centred)  # ||x_n||^2 without an N x D temporary
    beta_ = float((row_squares**2).sum())
    delta_ = float((inputs.centred_gram**2).sum()) / n**2
    beta = 1.0 / (d * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * float(emp_cov_trace.sum()) + d * mu**2) / d
    beta = min(beta, delta)
    if delta <= 0:  # every feature constant: scikit-learn's beta is then 0 too, hence shrinkage 0
        return 0.0
    return 0.0 if beta == 0 else beta / delta


def reg_hscore_from_inputs(inputs: ScoreInputs) -> float:
    """Regularized H-Score of validated inputs (see :func:`reg_hscore`)."""
    alpha = ledoit_wolf_shrinkage(inputs)
    eigenvalues, _ = inputs.cov_eigh
    n, d = inputs.n_samples, inputs.n_features
    # Ledoit-Wolf covariance (1 - alpha) S + alpha mu I, S = Xc^T Xc / N, shares the eigenvectors of cov(f).
    empirical = eigenvalues * ((n - 1) / n)
    mu = float(inputs.centred_gram.diagonal().sum()) / n / d
    shrunk = (1.0 - alpha) * empirical + alpha * mu
    return (1.0 - alpha) * _between_class_trace(inputs, _pinv_inverse(shrunk))


def reg_hscore(features: Any, labels: Any, *, device: Any = None) -> float:
    r"""Regularized H-Score of Ibrahim et al., *Newer is not always better: Rethinking transferability metrics,
    their peculiarities, stability and performance* (ECML-PKDD 2022).

    .. math::
        \mathcal{H}_\alpha = \operatorname{tr}\left(\operatorname{cov}_\alpha(f)^{+}\,(1-\alpha)\,
        \operatorname{cov}\left(\mathbb{E}[f \mid y]\right)\right)

    where the features are centred and :math:`(\alpha, \operatorname{cov}_\alpha)` is scikit-learn's
    Ledoit-Wolf shrinkage estimate; the pseudo-inverse uses rcond 1e-15.  Higher is better.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar.
    """
    return _single_score("reg_hscore", features, labels, device=device)


register_score("hscore", hscore_from_inputs)
register_score("reg_hscore", reg_hscore_from_inputs)
