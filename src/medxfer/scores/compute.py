"""``compute_scores``: every requested score on one set of inputs, sharing the expensive statistics."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import REGISTRY

__all__ = ["compute_scores"]


def compute_scores(
    features: Any,
    labels: Any,
    probs: Any = None,
    names: Iterable[str] | None = None,
    *,
    device: Any = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Compute transferability scores; every value is a finite Python float, higher meaning better.

    Args:
        features: (N, D) float32 or float64 features of the target data (NumPy or torch).
        labels: (N,) target labels of any hashable type (strings, non-contiguous integers, ...).
        probs: (N, S) source-head probabilities, needed by ``leep`` and ``nce``.
        names: scores to compute, in this order; ``None`` means every registered score
            (:func:`available_scores`), in registration order.
        device: ``None`` runs on the CPU; a torch device (``"cuda"``) moves the dense linear algebra there
            (N-LEEP's k-means start always runs in scikit-learn on the CPU).  On the CPU, torch's thread setting
            applies, except that the small steps of N-LEEP's EM run on one thread, and the covariance
            eigendecomposition and EM's large products too while other processes keep the cores busy (their
            many synchronisations then make several threads 2-15x slower than one).
        timings: when a dict is given, it receives the wall-clock seconds of each score.  Work shared between
            scores (input checks, covariance and its eigendecomposition, class sums) is charged to the first
            score that needs it, so with the default order ``hscore`` carries the covariance eigendecomposition.

    Raises:
        ScoreError: unknown names, a score that needs ``probs`` when none are given, invalid inputs, or a score
            that cannot be computed on these inputs (the message says which and why).

    Fallbacks are announced with :class:`ScoreWarning` (see each score's docstring).
    """
    requested = list(REGISTRY) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in requested if name not in REGISTRY]
    if unknown:
        raise ScoreError(f"unknown score name(s) {unknown}; available: {', '.join(REGISTRY)}")
    if probs is None:
        needing = [name for name in requested if REGISTRY[name].needs_probs]
        if needing:
            raise ScoreError(
                f"score(s) {needing} need probs, the (N, S) source-head probabilities; pass probs= or leave "
                "them out of names"
            )
    start = time.perf_counter()
    inputs = ScoreInputs(features, labels, probs, device=device)
    results: dict[str, float] = {}
    for name in requested:
        value = float(REGISTRY[name].fn(inputs))
        if timings is not None:
            now = time.perf_counter()
            timings[name] = now - start
            start = now
        if not math.isfinite(value):
            raise ScoreError(
                f"score {name!r} is undefined on these inputs (it came out {value}); check for degenerate "
                "features, e.g. all zero"
            )
        results[name] = value
    return results
