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

When the distinct rows are fewer than D (small datasets, and the bootstrap draws of rank intervals, which repeat
rows), the same three quantities come from the Gram matrix of the distinct rows, each weighted by its count
(:func:`_sample_side`): a P x P eigendecomposition instead of D x D (P ~ 0.63 N in a draw), and the D - P zero
eigenvalues of G are exactly zero there instead of rounding errors, which the D x D path's fixed point amplifies
(up to ~1e-4 relative on a draw of 600 rows of D = 1280).  Both paths share the fixed point and the evidence
(:func:`_evidence`); tests/test_logme_paths.py checks them against each other and the literal reference.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from medxfer.scores._linalg import eigh_ascending, gram, limited_threads, threads_for_synchronised_work
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["logme", "logme_from_inputs"]

MAX_ITERATIONS = 11
RELATIVE_CHANGE_TOL = 0.01
EPS = 1e-7  # the paper's code guards its divisions with 1e-7


class _Spectrum:
    """What the evidence needs of F through the eigenvalues s_i of G = F^T F, per class (columns), at lam = alpha/beta:

    * ``gamma(lam)``     = sum_i s_i / (s_i + lam)
    * ``fit(lam)``       = (||m||^2, ||y - F m||^2) with m = (G + lam I)^{-1} F^T y
    * ``log_det(lam)``   = sum_i log(s_i + lam) over all D eigenvalues

    Two ways to get them, equal up to rounding: :func:`_feature_side` from the D x D covariance eigendecomposition
    (shared with the other scores), :func:`_sample_side` from the Gram matrix of the distinct rows.
    """

    def __init__(self, gamma: Callable, fit: Callable, log_det: Callable) -> None:
        self.gamma, self.fit, self.log_det = gamma, fit, log_det


def _feature_side(inputs: ScoreInputs) -> _Spectrum:
    """G from the covariance's eigenbasis plus the rank-one mean term (see the module docstring): O(D) per iteration
    after the shared D x D eigendecomposition."""
    import torch

    n, n_classes = inputs.n_samples, inputs.n_classes
    eigenvalues, vectors = inputs.cov_eigh
    k = (eigenvalues * (n - 1)).clamp(min=0.0)[:, None]  # eigenvalues of Xc^T Xc, (D, 1)
    u = (math.sqrt(n) * (vectors.T @ inputs.mean))[:, None]  # (D, 1)
    b = vectors.T @ inputs.class_sums.T  # V^T F^T y per class, (D, C)
    counts = inputs.counts_tensor  # y^T y of the one-vs-rest targets

    def rank_one_solve(lam: torch.Tensor) -> torch.Tensor:
        a = k + lam  # (D, C)
        a_b, a_u = b / a, u / a
        return a_b - a_u * (u * a_b).sum(0) / (1.0 + (u * a_u).sum(0))

    def gamma(lam: torch.Tensor) -> torch.Tensor:
        a = k + lam
        q1, q2 = (u**2 / a).sum(0), (u**2 / a**2).sum(0)
        return (k / a).sum(0) + lam * q2 / (1.0 + q1)

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

    def fit(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m_eig = rank_one_solve(lam)  # (alpha I + beta G)^{-1} beta F^T y in the eigenbasis
        return (m_eig**2).sum(0), residual_norms(m_eig)

    def log_det(lam: torch.Tensor) -> torch.Tensor:
        a = k + lam
        return torch.log(a).sum(0) + torch.log1p((u**2 / a).sum(0))

    return _Spectrum(gamma, fit, log_det)


def _sample_side(inputs: ScoreInputs) -> _Spectrum:
    """G's nonzero eigenvalues from the Gram matrix of the distinct rows: the fast path when they are fewer than D.

    Row j of the P distinct rows F_u, repeated w_j times, with n_jc copies of class c: G = F_u^T W F_u, so with
    H = W^{1/2} F_u = U diag(sqrt s) V^T (r = min(P, D) values, the other D - r eigenvalues of G are zero) and
    z = U^T W^{-1/2} n_c: V^T F^T y = sqrt(s) z, so m = V (sqrt(s) z / (s + lam)), ||m||^2 = sum s z^2 / (s + lam)^2
    and, U being a full basis of R^P, ||y - F m||^2 = sum_i (lam z_i / (s_i + lam))^2 + sum_j (n_jc - n_jc^2 / w_j)
    (sums of non-negative terms: no cancellation; the second is 0 unless copies of a row differ in label), and
    sum_D log(s + lam) = sum_r log(s_i + lam) + (D - r) log lam.  Exact with repeated rows (a bootstrap draw's
    D - r zero eigenvalues are zeros here, not rounding); O(P^3) once, O(P) per iteration.
    """
    import torch

    d, n_classes, device = inputs.n_features, inputs.n_classes, inputs.device
    first, inverse = (torch.from_numpy(a).to(device) for a in inputs.distinct_rows)
    p, r = len(first), min(len(first), d)
    # small problems: one thread for all of it (what a second one saves, waiting for it on busy cores costs)
    threads = 1 if p <= SAMPLE_SIDE_ONE_THREAD else threads_for_synchronised_work(device)
    with limited_threads(device, threads):
        copies = torch.zeros((p, n_classes), dtype=torch.float64, device=device)  # n_jc
        copies.index_put_((inverse, inputs.codes_tensor), torch.ones_like(inverse, dtype=torch.float64),
                          accumulate=True)
        w = copies.sum(1, keepdim=True)  # (P, 1)
        h = inputs.x[first] * w.sqrt()  # W^{1/2} F_u, (P, D)
        s, vectors = eigh_ascending(gram(h.T), threads, "the Gram matrix of the features")  # of h @ h.T
        s = s.clamp(min=0.0)
        s[: p - r] = 0.0  # H H^T has rank <= D: the smallest P - r values eigh returns are rounding
        s = s[:, None]
        z = vectors.T @ (copies / w.sqrt())  # (P, C)
        within = (copies - copies**2 / w).sum(0)  # the part of ||y - F m||^2 no m can fit

    def gamma(lam: torch.Tensor) -> torch.Tensor:
        return (s / (s + lam)).sum(0)

    def fit(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = s + lam
        return (s * z**2 / a**2).sum(0), ((lam * z / a) ** 2).sum(0) + within

    def log_det(lam: torch.Tensor) -> torch.Tensor:
        return torch.log(s[p - r:] + lam).sum(0) + (d - r) * torch.log(lam)

    return _Spectrum(gamma, fit, log_det)


#: Gram matrices of up to this many distinct rows are decomposed on one thread (0.05 s at 600, 0.2 s at 1024: a second
#: thread saves less than deciding whether it helps, :func:`~medxfer.scores._linalg.threads_for_synchronised_work`,
#: costs on busy cores)
SAMPLE_SIDE_ONE_THREAD = 1024


def logme_from_inputs(inputs: ScoreInputs) -> float:
    """LogME of validated inputs (see :func:`logme`): through the Gram matrix of the distinct rows when they are
    fewer than the dimensions, else through the shared covariance eigendecomposition."""
    fewer = len(inputs.distinct_rows[0]) < inputs.n_features
    spectrum = _sample_side(inputs) if fewer else _feature_side(inputs)
    return _evidence(inputs, spectrum)


def _evidence(inputs: ScoreInputs, spectrum: _Spectrum) -> float:
    """The fixed point of alpha and beta per class and the mean evidence per sample (the formula of :func:`logme`)."""
    import torch

    n, d, n_classes = inputs.n_samples, inputs.n_features, inputs.n_classes
    ones = torch.ones(n_classes, dtype=torch.float64, device=inputs.device)
    alpha, beta, lam = ones.clone(), ones.clone(), ones.clone()
    alpha_de, beta_de = ones.clone(), ones.clone()
    active = torch.ones(n_classes, dtype=torch.bool, device=inputs.device)
    for _ in range(MAX_ITERATIONS):
        gamma = spectrum.gamma(lam)
        new_alpha_de, new_beta_de = spectrum.fit(alpha / beta)  # ||m||^2, ||y - F m||^2
        new_alpha = gamma / (new_alpha_de + EPS)
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

    log_det = d * torch.log(beta) + spectrum.log_det(alpha / beta)  # sum log(alpha + beta s)
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
