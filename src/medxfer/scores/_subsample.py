"""Seeded stratified subsampling for the scores whose cost grows with N^2 (PARC, k-NN), and option checks."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from medxfer.scores.errors import ScoreError

__all__ = ["check_int_option", "check_seed", "stratified_subsample"]


def check_int_option(score: str, option: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools refused), or :class:`ScoreError` naming score and option."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ScoreError(f"{score}: option {option} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ScoreError(f"{score}: option {option} must be >= {minimum}, got {number}")
    return number


def check_seed(score: str, value: Any) -> int:
    """A seed for :func:`numpy.random.default_rng`: an integer >= 0."""
    return check_int_option(score, "seed", value, 0)


def stratified_subsample(codes: np.ndarray, n_classes: int, max_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` samples drawn per class in proportion to the class sizes.

    With N <= ``max_samples`` every index is returned (no draw).  Otherwise class c of n_c samples gets
    floor(n_c m / N) samples (m = ``max_samples``), at least min(n_c, 2) so that every class keeps
    within-class pairs, and the total is brought to exactly m by largest remainder: one more sample for the
    classes with the largest remainders n_c m / N - allocation, or one fewer for the classes with the
    smallest.  Within each class the samples taken are the first ones in ``default_rng(seed).permutation(N)``,
    and ties between remainders go to the class that comes first in that permutation, so that the draw
    does not depend on how the classes are named.
    """
    n = len(codes)
    if n <= max_samples:
        return np.arange(n)
    counts = np.bincount(codes, minlength=n_classes)
    floor = np.minimum(counts, 2)
    if floor.sum() > max_samples:
        raise ScoreError(
            f"max_samples={max_samples} cannot keep 2 samples of each of the {n_classes} classes "
            f"(needs {int(floor.sum())}); raise max_samples"
        )
    order = np.random.default_rng(seed).permutation(n)
    first_position = np.full(n_classes, n)
    positions = np.arange(n)
    np.minimum.at(first_position, codes[order], positions)
    # quotas n_c m / N in exact integer arithmetic: remainders are (n_c m - allocation N) / N, so ties are ties
    scaled = [int(count) * max_samples for count in counts]
    allocation = [min(max(q // n, int(f)), int(count)) for q, f, count in zip(scaled, floor, counts)]
    missing = max_samples - sum(allocation)
    while missing != 0:
        if missing > 0:  # the largest remainders first, among classes with samples left
            candidates = [c for c in range(n_classes) if allocation[c] < counts[c]]
            ranked = sorted(candidates, key=lambda c: (allocation[c] * n - scaled[c], first_position[c]))
            step = 1
        else:  # the smallest remainders (most over-allocated) first, down to the floor
            candidates = [c for c in range(n_classes) if allocation[c] > floor[c]]
            ranked = sorted(candidates, key=lambda c: (scaled[c] - allocation[c] * n, first_position[c]))
            step = -1
        for c in ranked[: abs(missing)]:
            allocation[c] += step
        missing = max_samples - sum(allocation)
    taken = np.zeros(n_classes, dtype=np.int64)
    chosen = []
    for index in order:
        c = codes[index]
        if taken[c] < allocation[c]:
            taken[c] += 1
            chosen.append(index)
            if len(chosen) == max_samples:
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))
