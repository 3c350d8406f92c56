"""PARC: Spearman correlation between the pairwise dissimilarities of the features and of the labels."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from medxfer.scores._subsample import check_int_option, check_seed, stratified_subsample
from medxfer.scores.errors import ScoreError, ScoreWarning
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import ScoreResult, register_score, single_score as _single_score

__all__ = ["PARC_DIMENSIONS", "PARC_MAX_SAMPLES", "parc", "parc_from_inputs", "principal_projections"]

PARC_DIMENSIONS = 32
PARC_MAX_SAMPLES = 2000
EIGENVALUE_RCOND = 1e-12


def principal_projections(features: np.ndarray, n_components: int) -> np.ndarray:
    """(M, k) projections on the k leading principal axes, as ``PCA(k).fit_transform`` (exact solver, axes
    signed like scikit-learn: the largest-magnitude entry of each axis positive).

    The eigendecomposition is that of the smaller of the D x D and M x M Gram matrices.  Axes whose variance
    is below 1e-12 of the largest are numerical noise and are dropped (with a :class:`ScoreWarning`).
    """
    centred = features - features.mean(axis=0)
    m, d = centred.shape
    if m <= d:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        values, vectors = values[::-1], vectors[:, ::-1]
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred)
        values, vectors = values[::-1], vectors[:, ::-1]
    usable = int(np.count_nonzero(values[:n_components] > EIGENVALUE_RCOND * values[0])) if values[0] > 0 else 0
    if usable < n_components:
        warnings.warn(
            f"PARC uses {usable} principal components instead of {n_components}: the others have no variance",
            ScoreWarning,
            stacklevel=4,
        )
    values, vectors = values[:usable], vectors[:, :usable]
    axes = (centred.T @ vectors) / np.sqrt(values) if m <= d else vectors  # (D, k) unit principal axes
    largest = np.argmax(np.abs(axes), axis=0)
    signs = np.sign(axes[largest, np.arange(usable)])
    signs[signs == 0] = 1.0
    return centred @ (axes * signs)


def _upper_triangle(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def parc_from_inputs(
    inputs: ScoreInputs, *, n_dims: int = PARC_DIMENSIONS, max_samples: int = PARC_MAX_SAMPLES, seed: int = 0
) -> ScoreResult:
    """PARC of validated inputs (see :func:`parc`)."""
    from scipy.stats import rankdata

    n_dims = check_int_option("parc", "n_dims", n_dims, 2)
    max_samples = check_int_option("parc", "max_samples", max_samples, 3)
    seed = check_seed("parc", seed)
    chosen = stratified_subsample(inputs.codes, inputs.n_classes, max_samples, seed)
    features = np.asarray(inputs.raw_features[chosen], dtype=np.float64)
    codes = inputs.codes[chosen]
    m = len(chosen)
    if np.bincount(codes).max() < 2:
        raise ScoreError("PARC needs a class with at least 2 samples (a pair of the same class); every class has 1")
    wanted = min(n_dims, m - 1, inputs.n_features)
    if wanted < n_dims:
        warnings.warn(
            f"PARC uses {wanted} principal components instead of {n_dims}: only N - 1 = {m - 1} and "
            f"D = {inputs.n_features} are available",
            ScoreWarning,
            stacklevel=3,
        )
    projected = principal_projections(features, wanted)
    if projected.shape[1] < 2:
        raise ScoreError(
            f"PARC correlates samples across principal components and needs at least 2; got {projected.shape[1]}"
        )
    # StandardScaler, then the correlation between samples (np.corrcoef of the rows)
    scale = projected.std(axis=0)
    scale[scale == 0] = 1.0
    standardised = (projected - projected.mean(axis=0)) / scale
    rows = standardised - standardised.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    if not (norms > 0).all():
        row = int(np.flatnonzero(~(norms > 0))[0])
        raise ScoreError(f"PARC: sample {int(chosen[row])} has the same value on every standardised component")
    rows /= norms[:, None]
    feature_dissimilarity = _upper_triangle(1.0 - np.clip(rows @ rows.T, -1.0, 1.0))
    # 1 - corrcoef of one-hot rows is 0 within a class and 1 + 1/(C - 1) across classes: its ranks are an
    # increasing affine function of "different class", so Spearman = Pearson(ranks of features, that indicator)
    different = _upper_triangle(codes[:, None] != codes[None, :]).astype(np.float64)
    ranks = rankdata(feature_dissimilarity)
    ranks -= ranks.mean()
    different -= different.mean()
    denominator = np.sqrt((ranks @ ranks) * (different @ different))
    if not denominator > 0:
        raise ScoreError("PARC: every pair of samples is equally dissimilar; the rank correlation is undefined")
    value = 100.0 * float(ranks @ different) / float(denominator)
    return ScoreResult(value, {"n_samples": float(m), "seed": float(seed)})


def parc(
    features: Any,
    labels: Any,
    *,
    device: Any = None,
    n_dims: int = PARC_DIMENSIONS,
    max_samples: int = PARC_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    r"""PARC of Bolya et al., *Scalable Diverse Model Selection for Accessible Transfer Learning* (NeurIPS 2021),
    as in the paper's code (``PARC`` of ``dbolya/parc``, also in ``TencentARC/SFDA``).

    The features are reduced to their 32 leading principal components (``n_dims``) and standardised per
    component (``StandardScaler``); with :math:`\rho` the Pearson correlation between two samples' vectors
    (``np.corrcoef`` of the rows) and :math:`e_y` the one-hot labels,

    .. math::
        \mathrm{PARC} = 100 \cdot \operatorname{Spearman}\Big(\big\{1 - \rho(f_i, f_j)\big\}_{i<j},\
        \big\{1 - \rho(e_{y_i}, e_{y_j})\big\}_{i<j}\Big),

    times 100 as in the code.  Higher is better.  Differences from the code: the PCA is exact (the code uses a
    randomized SVD with one power iteration, ``random_state=1919``), and it keeps min(32, N - 1, D) components
    (the code min(32, N)), with a :class:`ScoreWarning` when fewer than 32.

    Subsampling: the pairs make it O(N^2) in time and memory, so at most ``max_samples`` (2000) samples are
    used, drawn per class in proportion to the class sizes with ``numpy.random.default_rng(seed)`` (``seed``
    0; every class keeps min(n_c, 2) samples; see ``medxfer.scores._subsample.stratified_subsample``).  With
    N <= ``max_samples`` every sample is used.  The extras report ``n_samples`` (= min(N, max_samples)) and
    ``seed``.  Runs on the CPU whatever ``device``.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar in [-100, 100].
    """
    return _single_score(
        "parc", features, labels, device=device, n_dims=n_dims, max_samples=max_samples, seed=seed
    )


register_score("parc", parc_from_inputs, default=False)
