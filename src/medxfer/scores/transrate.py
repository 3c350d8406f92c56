"""TransRate: the coding rate of the features minus the mean coding rate of each class's features."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

if TYPE_CHECKING:
    import torch

__all__ = ["TRANSRATE_EPS", "transrate", "transrate_from_inputs"]

TRANSRATE_EPS = 1e-4


def _log_det_identity_plus(z: "torch.Tensor", scale: float, z_gram: "torch.Tensor | None" = None) -> float:
    """log det(I + Z^T Z / scale) for an (n, D) Z, through the smaller of the D x D and n x n Gram matrices
    (Sylvester's determinant identity) and a Cholesky factor: the matrix is symmetric with eigenvalues >= 1.
    ``z_gram``: Z^T Z when already known."""
    import torch

    from medxfer.scores._linalg import gram

    n, d = z.shape
    if n < d:
        small = gram(z.T.contiguous())  # Z Z^T
    else:
        small = gram(z) if z_gram is None else z_gram
    small = small / scale
    small.diagonal().add_(1.0)
    factor, info = torch.linalg.cholesky_ex(small)
    if int(info) != 0:
        raise ScoreError("TransRate: the coding-rate matrix I + Z^T Z / (n eps) is not positive definite")
    return 2.0 * float(torch.log(factor.diagonal()).sum())


def transrate_from_inputs(inputs: ScoreInputs, *, eps: float = TRANSRATE_EPS) -> float:
    """TransRate of validated inputs (see :func:`transrate`)."""
    import torch

    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ScoreError(f"transrate: option eps must be a positive number, got {eps!r}")
    n = inputs.n_samples
    shared = inputs.centred_gram if n >= inputs.n_features else None  # cached for the other scores too
    rate_all = 0.5 * _log_det_identity_plus(inputs.centred, n * eps, shared)
    class_rates = []
    for c in range(inputs.n_classes):
        rows = torch.from_numpy((inputs.codes == c).nonzero()[0]).to(inputs.device)
        members = inputs.centred.index_select(0, rows)  # centred with the overall mean, as in the paper's code
        class_rates.append(0.5 * _log_det_identity_plus(members, len(rows) * eps))
    return rate_all - sum(class_rates) / inputs.n_classes


def transrate(features: Any, labels: Any, *, device: Any = None, eps: float = TRANSRATE_EPS) -> float:
    r"""TransRate of Huang et al., *Frustratingly Easy Transferability Estimation* (ICML 2022), as in the
    paper's code.

    With Z the features centred by their overall mean, :math:`Z_c` the rows of class c (still centred by the
    overall mean, not the class mean) and the coding rate
    :math:`R(Z, \epsilon) = \tfrac12 \log\det\left(I + \tfrac{1}{n\,\epsilon} Z^\top Z\right)` (n rows of Z),

    .. math::
        \mathrm{TransRate} = R(Z, \epsilon) - \frac{1}{C}\sum_{c=1}^{C} R(Z_c, \epsilon),
        \qquad \epsilon = 10^{-4}

    (``eps`` option).  Higher is better.  The log-determinants come from a Cholesky factor of the smaller of
    the D x D and n x n Gram matrices (equal by Sylvester's identity), O(N D min(N, D)) in all; a class with a
    single sample is defined (its rate is that of one vector).

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar.
    """
    return _single_score("transrate", features, labels, device=device, eps=eps)


register_score("transrate", transrate_from_inputs, default=False)
