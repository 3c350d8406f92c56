"""k-NN: leave-one-out k-nearest-neighbour balanced accuracy of the features."""

from __future__ import annotations

from typing import Any

import numpy as np

from medxfer.scores._subsample import check_int_option, check_seed, stratified_subsample
from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import ScoreResult, register_score, single_score as _single_score

__all__ = ["KNN_K", "KNN_MAX_SAMPLES", "KNN_METRICS", "knn", "knn_from_inputs", "leave_one_out_neighbours"]

KNN_K = 5
KNN_MAX_SAMPLES = 2000
KNN_METRICS = ("cosine", "euclidean")
_BLOCK_ROWS = 512


def leave_one_out_neighbours(features: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(M, k) indices of each sample's k nearest other samples, nearest first, ties to the lower index.

    ``cosine``: decreasing cosine similarity (a zero vector has similarity 0 to everything); ``euclidean``:
    increasing squared distance.  Row blocks bound the memory to 512 x M similarities.
    """
    m = features.shape[0]
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", features, features))
        points = features / np.where(norms > 0, norms, 1.0)[:, None]
    else:
        points = features
        squares = np.einsum("ij,ij->i", features, features)
    neighbours = np.empty((m, k), dtype=np.int64)
    for start in range(0, m, _BLOCK_ROWS):
        block = slice(start, min(start + _BLOCK_ROWS, m))
        products = points[block] @ points.T
        if metric == "cosine":
            key = -products  # sort ascending: most similar first
        else:
            key = squares[block, None] + squares[None, :] - 2.0 * products
        key[np.arange(block.stop - block.start), np.arange(block.start, block.stop)] = np.inf  # not oneself
        neighbours[block] = np.argsort(key, axis=1, kind="stable")[:, :k]
    return neighbours


def knn_from_inputs(
    inputs: ScoreInputs,
    *,
    k: int = KNN_K,
    metric: str = "cosine",
    max_samples: int = KNN_MAX_SAMPLES,
    seed: int = 0,
) -> ScoreResult:
    """k-NN leave-one-out balanced accuracy of validated inputs (see :func:`knn`)."""
    k = check_int_option("knn", "k", k, 1)
    if metric not in KNN_METRICS:
        raise ScoreError(f"knn: option metric must be one of {', '.join(KNN_METRICS)}, got {metric!r}")
    max_samples = check_int_option("knn", "max_samples", max_samples, 2)
    seed = check_seed("knn", seed)
    chosen = stratified_subsample(inputs.codes, inputs.n_classes, max_samples, seed)
    codes = inputs.codes[chosen]
    m = len(chosen)
    counts = np.bincount(codes, minlength=inputs.n_classes)
    if counts.min() < 2:
        lonely = [inputs.class_names[c] for c in np.flatnonzero(counts < 2)]
        raise ScoreError(
            f"k-NN leave-one-out needs at least 2 samples per class (a sample's neighbours exclude itself); "
            f"class(es) {lonely} have 1"
        )
    if m <= k:
        raise ScoreError(f"k-NN with k={k} needs more than k samples, got {m}; lower k")
    features = np.asarray(inputs.raw_features[chosen], dtype=np.float64)
    neighbour_classes = codes[leave_one_out_neighbours(features, k, metric)]  # (M, k)
    votes = np.zeros((m, inputs.n_classes), dtype=np.int64)
    np.add.at(votes, (np.arange(m)[:, None], neighbour_classes), 1)
    # a tie between classes goes to the one with the nearer neighbour: rank by votes, then by first position
    first = np.full((m, inputs.n_classes), k, dtype=np.int64)
    np.minimum.at(first, (np.arange(m)[:, None], neighbour_classes), np.broadcast_to(np.arange(k), (m, k)))
    predicted = np.argmax(votes * (k + 1) + (k - first), axis=1)
    recalls = [np.mean(predicted[codes == c] == c) for c in range(inputs.n_classes)]
    return ScoreResult(float(np.mean(recalls)), {"n_samples": float(m), "seed": float(seed)})


def knn(
    features: Any,
    labels: Any,
    *,
    device: Any = None,
    k: int = KNN_K,
    metric: str = "cosine",
    max_samples: int = KNN_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    r"""Leave-one-out k-nearest-neighbour balanced accuracy of the features (a baseline, no paper).

    Each sample is classified by a majority vote of its k = 5 nearest other samples (``k``) under the cosine
    similarity (``metric="cosine"``; ``"euclidean"`` also accepted); the score is the balanced accuracy

    .. math::
        \mathrm{kNN} = \frac1C \sum_{c=1}^{C} \frac{\#\{i : y_i = c,\ \hat y_i = c\}}{\#\{i : y_i = c\}},

    the mean recall over classes, because the study's target (fine-tuned ``bal_acc``) is balanced accuracy
    too; plain accuracy would reward the majority class of the imbalanced medical datasets.  Higher is better.
    Ties are broken deterministically: equal similarities by the lower sample index, equal votes by the class
    of the nearer neighbour.  A zero feature vector has cosine similarity 0 to every other.

    Subsampling: O(N^2), so at most ``max_samples`` (2000) samples are used, drawn per class in proportion to
    the class sizes with ``numpy.random.default_rng(seed)`` (``seed`` 0), exactly as for :func:`parc`; the
    extras report ``n_samples`` (= min(N, max_samples)) and ``seed``.  Raises :class:`ScoreError` when a class
    has fewer than 2 samples (in the subsample) or N <= k.  Runs on the CPU whatever ``device``.

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values.
        - score: scalar in [0, 1].
    """
    return _single_score(
        "knn", features, labels, device=device, k=k, metric=metric, max_samples=max_samples, seed=seed
    )


register_score("knn", knn_from_inputs, default=False)
