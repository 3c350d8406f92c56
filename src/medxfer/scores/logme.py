"""LogME: the maximum marginal evidence of a Bayesian linear model on the features, per one-vs-rest class.

The evidence needs the eigenvalues s_i of G = F^T F (D x D, features not centred).  G is the centred Gram
matrix plus a rank-one term, G = Xc^T Xc + N m m^T, so everything is computed in the eigenbasis of the shared
covariance: with K = diag((N - 1) w) and u = sqrt(N) V^T m,

* (G + lam I)^{-1} b        = A^{-1} b - A^{-1} u (u^T A^{-1} b) / (1 + u^T A^{-1} u),   A = K + lam I
* sum_i s_i / (s_i + lam)   = sum_i K_i / A_i + lam (u^T A^{-2} u) / (1 + u^T A^{-1} u)
* sum_i log(s_i + lam)      = sum_i log A_i + log(1 + u^T A^{-1} u)

(Sherman-Morrison and the matrix determinant lemma), and ||y - F m||^2 = y^T y - 2 m^T F^T y + m^T G m
likewise: O(D) per iteration instead of a second D x D SVD and a pass over F.  This is exact for any N and D,
including N < D where thuml/LogME's "fast" variant (an SVD of F that drops the D - N zero eigenvalues) is
wrong.
"""

from __future__ import annotations

import math
from typing import Any

from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["logme", "logme_from_inputs"]

MAX_ITERATIONS = 11
RELATIVE_CHANGE_TOL = 0.01
EPS = 1e-7  # the paper's code guards its divisions with 1e-7


def logme_from_inputs(inputs: ScoreInputs) -> float:
    """LogME of validated inputs (see :func:`logme`)."""
    import torch

    n, d, n_classes = inputs.n_samples, inputs.n_features, inputs.n_classes
    eigenvalues, vectors = inputs.cov_eigh
    k = (eigenvalues * (n - 1)).clamp(min=0.0)[:, None]  # eigenvalues of Xc^T Xc, (D, 1)
    u = (math.sqrt(n) * (vectors.T @ inputs.mean))[:, None]  # (D, 1)
    b = vectors.T @ inputs.class_sums.T  # V^T F^T y per class, (D, C)

    def rank_one_solve(lam: torch.Tensor) -> torch.Tensor:
        a = k + lam  # (D, C)
        a_b, a_u = b / a, u / a
        return a_b - a_u * (u * a_b).sum(0) / (1.0 + (u * a_u).sum(0))

    def gamma_of(lam: torch.Tensor) -> torch.Tensor:
        a = k + lam
        q1, q2 = (u**2 / a).sum(0), (u**2 / a**2).sum(0)
        return (k / a).sum(0) + lam * q2 / (1.0 + q1)

    counts = inputs.counts_tensor  # y^T y of the one-vs-rest targets

    def residual_norms(m_eig: torch.Tensor) -> torch.Tensor:
        """||y - F m||^2 = y^T y - 2 m^T F^T y + m^T G m, in the eigenbasis (no pass over F).

        Where the fit is so close that this difference of large terms keeps fewer than ~12 digits
        (residual below 1e-4 y^T y), the residual is formed explicitly instead.
        """
        norms = counts - 2.0 * (m_eig * b).sum(0) + (k * m_eig**2).sum(0) + (u * m_eig).sum(0) ** 2
        close = norms < 1e-4 * counts
        if bool(close.any()):
            targets = torch.nn.functional.one_hot(inputs.codes_tensor, n_classes).to(torch.float64)[:, close]
            weights = vectors @ m_eig[:, close]  # F m = Xc m + 1 (mean . m)
            explicit = targets - (inputs.centred @ weights + inputs.mean @ weights)
            norms = norms.clone()
            norms[close] = (explicit**2).sum(0)
        return norms

    ones = torch.ones(n_classes, dtype=torch.float64, device=inputs.device)
    alpha, beta, lam = ones.clone(), ones.clone(), ones.clone()
    alpha_de, beta_de = ones.clone(), ones.clone()
    active = torch.ones(n_classes, dtype=torch.bool, device=inputs.device)
    for _ in range(MAX_ITERATIONS):
        gamma = gamma_of(lam)
        m_eig = rank_one_solve(alpha / beta)  # (alpha I + beta G)^{-1} beta F^T y in the eigenbasis
        new_alpha_de = (m_eig**2).sum(0)
        new_alpha = gamma / (new_alpha_de + EPS)
        new_beta_de = residual_norms(m_eig)
        new_beta = (n - gamma) / (new_beta_de + EPS)
        new_lam = new_alpha / (new_beta + EPS)
        converged = (new_lam - lam).abs() / (lam + EPS) < RELATIVE_CHANGE_TOL
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        alpha_de = torch.where(active, new_alpha_de, alpha_de)
        beta_de = torch.where(active, new_beta_de, beta_de)
        lam = torch.where(active & ~converged, new_lam, lam)
        active = active & ~converged
        if not bool(active.any()):
            break

    final_lam = alpha / beta
    a = k + final_lam
    log_det = d * torch.log(beta) + torch.log(a).sum(0) + torch.log1p((u**2 / a).sum(0))  # sum log(alpha + beta s)
    evidence = (
        d / 2.0 * torch.log(alpha)
        + n / 2.0 * torch.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * beta_de
        - alpha / 2.0 * alpha_de
        - n / 2.0 * math.log(2 * math.pi)
    )
    return float((evidence / n).mean())


def logme(features: Any, labels: Any, *, device: Any = None) -> float:
    r"""LogME of You et al., *LogME: Practical Assessment of Pre-trained Models for Transfer Learning*
    (ICML 2021).

    For each class c, a Bayesian linear regression of the one-vs-rest target :math:`y_c` on the (uncentred)
    features F, :math:`w \sim \mathcal N(0, \alpha^{-1} I)`, noise precision :math:`\beta`; the log evidence

    .. math::
        \mathcal L(\alpha, \beta) = \tfrac{D}{2}\log\alpha + \tfrac{N}{2}\log\beta
        - \tfrac12 \sum_i \log(\alpha + \beta s_i) - \tfrac{\beta}{2}\lVert y_c - F m\rVert^2
        - \tfrac{\alpha}{2}\lVert m\rVert^2 - \tfrac{N}{2}\log 2\pi,
        \qquad m = \beta(\alpha I + \beta F^\top F)^{-1} F^\top y_c

    (:math:`s_i` the eigenvalues of :math:`F^\top F`) is maximised by the fixed point
    :math:`\alpha \leftarrow \gamma / \lVert m\rVert^2`, :math:`\beta \leftarrow (N-\gamma)/\lVert y_c - Fm\rVert^2`,
    :math:`\gamma = \sum_i \beta s_i/(\alpha + \beta s_i)`, from :math:`\alpha=\beta=1`, at most 11 iterations,
    stopping when :math:`\alpha/\beta` changes by less than 1 % (the paper's code, with its 1e-7 guards).
    The score is the mean over classes of :math:`\mathcal L / N`.  Higher is better.  Correct for N < D.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar.
    """
    return _single_score("logme", features, labels, device=device)


register_score("logme", logme_from_inputs)
