"""scikit-learn's full-covariance GaussianMixture EM, re-run in torch float64.

The result matches ``GaussianMixture(n_components, covariance_type="full", random_state=42).fit(z)
.predict_proba(z)``: the same k-means start (scikit-learn's own ``KMeans(n_init=1)`` with the same random
state), the same responsibilities, the same ``10 * eps`` added to the component masses, ``reg_covar`` on the
diagonal, the same stopping rule (``|change of the mean log-likelihood| < tol``, at most ``max_iter``
iterations) and the same final e-step.

What differs is how the arithmetic is arranged.  Both steps need, for every component, an N x k x k product
(scikit-learn loops over components with NumPy).  Here the upper triangles of the outer products x x^T are
formed once (an N x k(k+1)/2 matrix O), so that

* the e-step's Mahalanobis terms are x^T P x - 2 x^T P mu + mu^T P mu, with x^T P x = O @ vech(P): one matrix
  product for all components, half the flops of the per-component products;
* the m-step's scatter matrices are resp^T O, again one product, half the flops.

The two steps are fused over row chunks (bounded memory), and the expansions lose nothing that matters at
float64: scikit-learn's own e-step, (X @ L) - (mu @ L), has the same cancellation.  On the CPU the EM uses
torch's threads, or one while other processes keep the cores busy (``_linalg.threads_for_synchronised_work``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medxfer.scores._linalg import limited_threads, threads_for_synchronised_work
from medxfer.scores.errors import ScoreError, ScoreWarning

if TYPE_CHECKING:
    import torch

__all__ = ["MixtureFit", "fit_gaussian_mixture"]

CHUNK_BYTES = 128 * 2**20
CACHE_BYTES = 512 * 2**20


@dataclass
class MixtureFit:
    """Posteriors p(component | x) of the fitted mixture, (N, K), and how the EM ended."""

    posteriors: "torch.Tensor"
    n_iter: int
    converged: bool
    lower_bound: float


class _OuterProducts:
    """Row chunks of z and of the upper triangles of their outer products, cached when small enough."""

    def __init__(self, z: "torch.Tensor") -> None:
        import torch

        n, k = z.shape
        self.z = z
        self.i, self.j = torch.triu_indices(k, k, device=z.device)
        self.n_pairs = int(self.i.numel())
        rows = max(1, CHUNK_BYTES // (8 * self.n_pairs))
        self.slices = [slice(start, min(start + rows, n)) for start in range(0, n, rows)]
        self.cache = [self._build(s) for s in self.slices] if 8 * n * self.n_pairs <= CACHE_BYTES else None

    def _build(self, rows: slice) -> "torch.Tensor":
        import torch

        block = self.z[rows]
        k = block.shape[1]
        out = torch.empty((block.shape[0], self.n_pairs), dtype=block.dtype, device=block.device)
        start = 0
        for a in range(k):  # row a of the upper triangle: x_a * x_a..x_{k-1}, in triu_indices order
            torch.mul(block[:, a : a + 1], block[:, a:], out=out[:, start : start + k - a])
            start += k - a
        return out

    def __iter__(self):
        for index, rows in enumerate(self.slices):
            outer = self.cache[index] if self.cache is not None else self._build(rows)
            yield self.z[rows], outer


@dataclass
class _Parameters:
    """What the e-step needs of the mixture parameters (weights w_c, means mu_c, precisions P_c)."""

    quadratic: "torch.Tensor"  # (K, n_pairs): vech(P_c) with off-diagonal entries doubled
    precision_means: "torch.Tensor"  # (K, k): P_c mu_c
    offsets: "torch.Tensor"  # (K,): log det(L_c^{-1}) + log w_c - (k log 2 pi + mu_c^T P_c mu_c) / 2


def _parameters(
    outer: _OuterProducts,
    resp_sum: "torch.Tensor",
    first: "torch.Tensor",
    second: "torch.Tensor",
    reg_covar: float,
    initial: bool,
    n_samples: int,
) -> _Parameters:
    """scikit-learn's ``_estimate_gaussian_parameters`` + ``_compute_precision_cholesky`` from sums.

    resp_sum = sum_n r_nc, first = sum_n r_nc x_n, second = sum_n r_nc vech(x_n x_n^T).
    """
    import torch

    n_components, dim = first.shape
    nk = resp_sum + 10 * torch.finfo(torch.float64).eps
    means = first / nk[:, None]
    scatter = torch.zeros((n_components, dim, dim), dtype=torch.float64, device=first.device)
    scatter[:, outer.i, outer.j] = second
    scatter[:, outer.j, outer.i] = second
    # sum_n r (x - mu)(x - mu)^T = S - s mu^T - mu s^T + (sum_n r) mu mu^T
    cross = first[:, :, None] * means[:, None, :]
    scatter = scatter - cross - cross.transpose(1, 2) + resp_sum[:, None, None] * means[:, :, None] * means[:, None, :]
    covariances = scatter / nk[:, None, None]
    covariances.diagonal(dim1=1, dim2=2).add_(reg_covar)
    cholesky, info = torch.linalg.cholesky_ex(covariances)
    if bool((info != 0).any()):
        bad = int(torch.nonzero(info)[0, 0])
        raise ScoreError(
            f"N-LEEP's Gaussian mixture failed: component {bad} has an ill-defined covariance (collapsed or "
            "duplicated samples, as scikit-learn would report); check the features for duplicates or constant rows"
        )
    precisions = torch.cholesky_inverse(cholesky)
    log_det = -torch.log(cholesky.diagonal(dim1=1, dim2=2)).sum(dim=1)
    weights = nk / n_samples if initial else nk / nk.sum()
    doubled = torch.where(outer.i == outer.j, 1.0, 2.0).to(torch.float64)
    quadratic = (precisions[:, outer.i, outer.j] * doubled).contiguous()
    precision_means = torch.einsum("cab,cb->ca", precisions, means)
    mahalanobis_means = (precision_means * means).sum(dim=1)
    offsets = log_det + torch.log(weights) - 0.5 * (dim * math.log(2 * math.pi) + mahalanobis_means)
    return _Parameters(quadratic, precision_means, offsets)


def _log_resp(z: "torch.Tensor", outer: "torch.Tensor", params: _Parameters) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Log normaliser (B,) and log responsibilities (B, K) of a row block, as scikit-learn's ``_e_step``."""
    import torch

    # (K, n_pairs) @ (n_pairs, B) runs about twice as fast as (B, n_pairs) @ (n_pairs, K) with MKL
    weighted = params.offsets - 0.5 * (params.quadratic @ outer.T).T + z @ params.precision_means.T
    log_norm = torch.logsumexp(weighted, dim=1)
    return log_norm, weighted - log_norm[:, None]


def _kmeans_labels(z: "torch.Tensor", n_components: int, random_state: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        labels = (
            KMeans(n_clusters=n_components, n_init=1, random_state=np.random.RandomState(random_state))
            .fit(z.cpu().numpy())
            .labels_
        )
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            warnings.warn(f"N-LEEP's k-means start: {warning.message}", ScoreWarning, stacklevel=4)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return labels


def fit_gaussian_mixture(
    z: "torch.Tensor",
    n_components: int,
    *,
    random_state: int = 42,
    reg_covar: float = 1e-6,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> MixtureFit:
    """Fit a full-covariance Gaussian mixture to the rows of ``z`` (float64) exactly as scikit-learn does."""
    import torch

    n_samples, _ = z.shape
    if n_samples < n_components:
        raise ScoreError(
            f"a mixture of {n_components} Gaussians needs at least {n_components} samples, got {n_samples}"
        )
    outer = _OuterProducts(z)

    labels = torch.from_numpy(_kmeans_labels(z, n_components, random_state).astype(np.int64)).to(z.device)
    resp = torch.nn.functional.one_hot(labels, n_components).to(torch.float64)
    threads = threads_for_synchronised_work(z.device)
    with limited_threads(z.device, threads):
        second = torch.zeros((n_components, outer.n_pairs), dtype=torch.float64, device=z.device)
        for rows, (_, outer_block) in zip(outer.slices, outer):
            second += resp[rows].T @ outer_block
        params = _parameters(outer, resp.sum(dim=0), resp.T @ z, second, reg_covar, True, n_samples)

    lower_bound = -math.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if n_iter % 10 == 0:  # other processes come and go
            threads = threads_for_synchronised_work(z.device)
        previous = lower_bound
        with limited_threads(z.device, threads):
            resp_sum = torch.zeros(n_components, dtype=torch.float64, device=z.device)
            first = torch.zeros((n_components, z.shape[1]), dtype=torch.float64, device=z.device)
            second = torch.zeros((n_components, outer.n_pairs), dtype=torch.float64, device=z.device)
            log_norm_sum = 0.0
            for z_block, outer_block in outer:  # e-step and m-step sums, fused over row chunks
                log_norm, log_resp = _log_resp(z_block, outer_block, params)
                log_norm_sum += float(log_norm.sum())
                block_resp = torch.exp(log_resp)
                resp_sum += block_resp.sum(dim=0)
                first += block_resp.T @ z_block
                second += block_resp.T @ outer_block
            params = _parameters(outer, resp_sum, first, second, reg_covar, False, n_samples)
        lower_bound = log_norm_sum / n_samples
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"N-LEEP's Gaussian mixture did not converge in {max_iter} EM iterations (last change of the mean "
            f"log-likelihood {lower_bound - previous:.3g}, tolerance {tol:g}); the last iterate is used, as "
            "scikit-learn does",
            ScoreWarning,
            stacklevel=3,
        )
    with limited_threads(z.device, threads):
        posteriors = torch.cat([torch.exp(_log_resp(block, outer_block, params)[1]) for block, outer_block in outer])
    return MixtureFit(posteriors=posteriors, n_iter=n_iter, converged=converged, lower_bound=lower_bound)
