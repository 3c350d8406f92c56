"""PACTran-Gaussian: a PAC-Bayesian bound for a linear softmax head on the features (negated: higher = better)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medxfer.scores._subsample import check_int_option
from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import ScoreResult, register_score, single_score as _single_score

__all__ = ["pactran", "pactran_from_inputs"]

LABEL_LOG_TERM = math.log(1.0 + 1e-10)  # sum_k y_k log(y_k + 1e-10) of a one-hot row, kept as in the code


def _positive(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ScoreError(f"pactran: option {option} must be a positive number, got {value!r}")
    return float(value)


def pactran_from_inputs(
    inputs: ScoreInputs, *, lda_factor: float = 1.0, max_iter: int = 100, tol: float = 1e-6
) -> ScoreResult:
    """PACTran-Gaussian of validated inputs (see :func:`pactran`)."""
    import scipy.optimize
    import torch

    lda_factor = _positive("lda_factor", lda_factor)
    tol = _positive("tol", tol)
    max_iter = check_int_option("pactran", "max_iter", max_iter, 1)
    x = inputs.centred  # (N, D), centred as in the paper's code
    n, d = x.shape
    n_classes = inputs.n_classes
    codes = inputs.codes_tensor
    rows = torch.arange(n, device=x.device)
    one_hot = torch.nn.functional.one_hot(codes, n_classes).to(torch.float64)
    ldas2 = lda_factor * n  # the L2 term is ||W||^2 / (2 ldas2)

    def unpack(theta: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        t = torch.from_numpy(theta).to(x.device).reshape(d + 1, n_classes)
        return t[:d], t[d:]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = unpack(theta)
        log_q = torch.log_softmax(x @ w + b, dim=1)
        loss = LABEL_LOG_TERM - float(log_q[rows, codes].sum()) / n + 0.5 * float((w * w).sum()) / ldas2
        residual = (torch.exp(log_q) - one_hot) / n
        grad_w = (residual.T @ x).T + w / ldas2  # 3-4x faster on the CPU than x.T @ residual
        grad = torch.cat([grad_w, residual.sum(dim=0, keepdim=True)])
        return loss, grad.reshape(-1).cpu().numpy()

    # The code starts from W ~ 0.03 N(0, 1) drawn from NumPy's global state; a fixed start makes the score a
    # function of the data alone (the objective is convex).
    start = np.zeros((d + 1) * n_classes)
    result = scipy.optimize.minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", options=dict(maxiter=max_iter), tol=tol
    )
    loss, _ = loss_and_grad(result.x)
    if not math.isfinite(loss):
        raise ScoreError("PACTran: the softmax head's loss is not finite; check the feature scale")
    w, b = unpack(result.x)
    probs = torch.softmax(x @ w + b, dim=1)
    # sum of the diagonal Hessian terms of the code's pac_grad2 (the data term there is not divided by N)
    curvature = ((x * x).sum(dim=1) + 1.0) @ (probs - probs * probs).sum(dim=1)
    kd = d * n_classes
    hessian_sum = float(curvature) + kd / ldas2
    sigma2_inv = hessian_sum * ldas2 / kd + 1e-10
    s2 = 100.0 * lda_factor / d  # the first (reported) prior variance of the code: 1000, 100, 10 times 1/D
    bound = loss + 0.5 * kd / ldas2 * s2 * math.log(sigma2_inv)
    return ScoreResult(-bound, {"n_iter": float(result.nit)})


def pactran(
    features: Any,
    labels: Any,
    *,
    device: Any = None,
    lda_factor: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> float:
    r"""PACTran-Gaussian of Ding et al., *PACTran: PAC-Bayesian Metrics for Estimating the Transferability of
    Pretrained Models to Classification Tasks* (ECCV 2022), as ``calculate_pac_gauss`` of the paper's code
    (``pactran_metrics`` in ``google-research/google-research``), negated.

    On the centred features :math:`x_i` (D dims) and one-hot labels (C classes), a linear softmax head
    :math:`(W, b)` minimises the mean cross-entropy plus a Gaussian prior on W,

    .. math::
        L(W, b) = \frac1N \sum_i -\log \operatorname{softmax}(W^\top x_i + b)_{y_i}
                  + \frac{\lVert W\rVert_F^2}{2\lambda N},\qquad \lambda = 1 \text{ (``lda_factor``)},

    then, with :math:`h` the sum of the diagonal second derivatives at the optimum as the code forms them,
    :math:`h = \sum_i (\lVert x_i\rVert^2 + 1) \sum_c p_{ic}(1 - p_{ic}) + DC/(\lambda N)`, and the prior
    variance :math:`\sigma^2 = 100\lambda / D` (the code's first, reported, choice: 1000/D, 100/D, 10/D for
    :math:`\lambda` = 10, 1, 0.1),

    .. math::
        \mathrm{PACTran} = L^\star + \frac{DC\,\sigma^2}{2\lambda N}
                           \log\left(\frac{h \lambda N}{DC} + 10^{-10}\right),

    a bound on the loss: lower is better, so the registered score is :math:`-\mathrm{PACTran}` (higher =
    better; ETran's code negates it too).  The term :math:`\frac1N\sum_{i,k} y_{ik}\log(y_{ik} + 10^{-10})`
    of the code's cross-entropy (about 1e-10) is kept.

    Optimisation: as the code, SciPy's L-BFGS-B with the analytic gradient, ``maxiter=100`` and ``tol=1e-6``
    (``max_iter`` and ``tol`` options), so :math:`L^\star` is the loss after at most 100 iterations, not
    necessarily the exact minimum (4e-4 relative above it on synthetic N = 3000, D = 1280 features), but from
    W = 0, b = 0 instead of the code's random start, so that the score depends on the data alone.  The number
    of iterations is reported as the extra ``n_iter``.  Cost: about 100 products of the (N, D) features with a
    (D, C) matrix.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar (the negated bound).
    """
    return _single_score(
        "pactran", features, labels, device=device, lda_factor=lda_factor, max_iter=max_iter, tol=tol
    )


register_score("pactran", pactran_from_inputs, default=False)
