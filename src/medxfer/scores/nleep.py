"""N-LEEP: LEEP on the posteriors of a Gaussian mixture fitted to the PCA-reduced features."""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

from medxfer.scores._gmm import fit_gaussian_mixture
from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.leep import leep_from_posteriors
from medxfer.scores.registry import ScoreResult, register_score, single_score as _single_score

__all__ = [
    "COMPONENTS_PER_CLASS",
    "NLEEP_SEEDS",
    "VARIANCE_KEPT",
    "nleep",
    "nleep_from_inputs",
    "pca_dimension_for_variance",
]

VARIANCE_KEPT = 0.8
COMPONENTS_PER_CLASS = 5
NLEEP_SEEDS = (42,)  # the paper's code: random_state=42


def pca_dimension_for_variance(inputs: ScoreInputs, fraction: float = VARIANCE_KEPT) -> int:
    """Number of principal components that ``PCA(n_components=fraction)`` keeps: the smallest k whose cumulated
    explained-variance ratio exceeds ``fraction`` (scikit-learn's ``searchsorted(..., side="right") + 1``)."""
    import torch

    eigenvalues, _ = inputs.cov_eigh
    explained = eigenvalues.clamp(min=0.0)
    total = explained.sum()
    if not bool(total > 0):
        raise ScoreError("features are constant (zero variance in every column); N-LEEP's PCA is undefined")
    ratio_cumsum = torch.cumsum(explained / total, dim=0)
    threshold = torch.tensor([fraction], dtype=torch.float64, device=ratio_cumsum.device)
    k = int(torch.searchsorted(ratio_cumsum, threshold, right=True)[0]) + 1
    return min(k, inputs.n_samples, inputs.n_features)


def _checked_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` as a non-empty tuple of distinct integers >= 0 (one integer is accepted as one seed)."""
    if isinstance(seeds, str) or not hasattr(seeds, "__iter__"):
        seeds = (seeds,)
    checked = []
    for seed in seeds:
        try:
            if isinstance(seed, bool):
                raise TypeError
            checked.append(operator.index(seed))
        except TypeError:
            raise ScoreError(f"nleep: option seeds must be integers >= 0, got {seed!r} in {seeds!r}") from None
    if not checked or min(checked) < 0 or len(set(checked)) != len(checked):
        raise ScoreError(f"nleep: option seeds must be one or more distinct integers >= 0, got {seeds!r}")
    return tuple(checked)


def nleep_from_inputs(inputs: ScoreInputs, *, seeds: Sequence[int] = NLEEP_SEEDS) -> float | ScoreResult:
    """N-LEEP of validated inputs (see :func:`nleep`)."""
    seeds = _checked_seeds(seeds)
    n_components = COMPONENTS_PER_CLASS * inputs.n_classes
    if inputs.n_samples < n_components:
        raise ScoreError(
            f"N-LEEP fits {COMPONENTS_PER_CLASS} x C = {n_components} Gaussians and needs at least "
            f"{n_components} samples, got {inputs.n_samples}"
        )
    projected = inputs.pca(pca_dimension_for_variance(inputs))
    values = []
    for seed in seeds:
        fit = fit_gaussian_mixture(projected, n_components, random_state=seed)
        values.append(leep_from_posteriors(fit.posteriors.cpu().numpy(), inputs.codes, inputs.n_classes))
    if len(values) == 1:
        return values[0]
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return ScoreResult(mean, {"std": std, "n_seeds": float(len(values))})


def nleep(features: Any, labels: Any, *, device: Any = None, seeds: Sequence[int] = NLEEP_SEEDS) -> float:
    r"""N-LEEP of Li et al., *Ranking Neural Checkpoints* (CVPR 2021), as in the paper's code.

    The features are reduced by PCA to the fewest components that keep 80 % of the variance, a Gaussian
    mixture with 5 C full-covariance components is fitted (scikit-learn's ``GaussianMixture`` defaults:
    k-means start, ``random_state=42``, ``reg_covar=1e-6``, ``tol=1e-3``, ``max_iter=100``; reproduced in torch
    float64), and LEEP is computed with the mixture posteriors in place of the source head:

    .. math::
        \mathrm{N\text{-}LEEP} = \frac{1}{N}\sum_n \log \sum_{v} \hat P(y_n \mid v)\, p(v \mid x_n)

    Higher (closer to 0) is better.  Float32 features work (everything runs in float64; the paper's code fits
    the mixture in float32 and can fail).  Raises :class:`ScoreError` when N < 5 C or a mixture component
    collapses; emits :class:`ScoreWarning` when EM (or its k-means start) does not converge.

    Unlike the other scores, N-LEEP depends on the order of the samples: the k-means++ start draws sample
    indices from ``random_state=42``, in the paper's code as here.  Equality with scikit-learn (relative 1e-6,
    about 1e-14 measured) assumes both fits run the same number of EM iterations, which could differ only if a
    change of the mean log-likelihood fell within rounding of ``tol``.

    Seeds (``seeds`` option, default ``(42,)``): with several distinct seeds, one mixture is fitted per seed
    (``random_state=seed``; the PCA is shared) and the score is the mean of their N-LEEPs; the extras report
    ``std``, the sample standard deviation over seeds (ddof = 1), and ``n_seeds``.  With one seed the value
    is that seed's N-LEEP and no extras are reported (the default is bit for bit the paper's choice).

    Shape:
        - features: (N, D), float32 or float64.
        - labels: (N,), any hashable values.
        - score: scalar, <= 0.
    """
    return _single_score("nleep", features, labels, device=device, seeds=seeds)


register_score("nleep", nleep_from_inputs)
