"""Scores of resampled images: how much a score's value, and so a ranking of models by it, depends on which of the
user's images were drawn. Each replicate draws, class by class, as many images as the class has, with replacement
(every class keeps its size), and recomputes the scores on those rows of the features."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from medxfer.scores.compute import compute_scores
from medxfer.scores.errors import ScoreError


def stratified_draws(labels: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` bootstrap draws of row indices, each class resampled within itself (same class sizes)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return [np.sort(np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in by_class]))
            for _ in range(n)]


def resampled_scores(features: Any, labels: Any, probs: Any, names: Iterable[str], *, n: int, seed: int,
                     device: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, float]]:
    """The scores ``names`` on ``n`` stratified bootstrap draws of the rows (one dict per draw; a score that fails
    on a draw, e.g. a class left with one distinct image, is NaN in that draw)."""
    names = list(names)
    features, labels = np.asarray(features), np.asarray(labels)
    probs = None if probs is None else np.asarray(probs)
    out = []
    for rows in stratified_draws(labels, n, seed):
        try:
            out.append(compute_scores(features[rows], labels[rows], None if probs is None else probs[rows], names,
                                      device=device, options=options or None))
        except ScoreError:
            out.append({s: float("nan") for s in names})
    return out
