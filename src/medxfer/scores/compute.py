"""``compute_scores``: every requested score on one set of inputs, sharing the expensive statistics."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Mapping

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import REGISTRY, CheckedOptions, ScoreResult, available_scores, score_options

__all__ = ["compute_scores"]


def _checked_options(options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``options`` as ``{score: {option: value}}`` after checking every score and option name."""
    if options is None:
        return {}
    if isinstance(options, CheckedOptions):  # a command's config, checked where it was read
        return {name: dict(given) for name, given in options.items()}
    if not isinstance(options, Mapping):
        raise ScoreError(
            f"options must map score names to their options, e.g. {{'parc': {{'max_samples': 1000}}}}; got "
            f"{type(options).__name__}"
        )
    unknown = [name for name in options if name not in REGISTRY]
    if unknown:
        raise ScoreError(f"options given for unknown score name(s) {unknown}; available: {', '.join(REGISTRY)}")
    checked: dict[str, dict[str, Any]] = {}
    for name, given in options.items():
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise ScoreError(
                f"options[{name!r}] must map option names to values, e.g. {{'seed': 1}}; got {type(given).__name__}"
            )
        accepted = score_options(name)
        if accepted is not None:
            bad = [option for option in given if option not in accepted]
            if bad:
                takes = f"it accepts: {', '.join(accepted)}" if accepted else "it takes no options"
                raise ScoreError(f"score {name!r} has no option(s) {bad}; {takes}")
        checked[name] = dict(given)
    return checked


def compute_scores(
    features: Any,
    labels: Any,
    probs: Any = None,
    names: Iterable[str] | None = None,
    *,
    device: Any = None,
    timings: dict[str, float] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    extras: dict[str, dict[str, float]] | None = None,
    failures: dict[str, str] | None = None,
) -> dict[str, float]:
    """Compute transferability scores; every value is a finite Python float, higher meaning better.

    Args:
        features: (N, D) float32 or float64 features of the target data (NumPy or torch).
        labels: (N,) target labels of any hashable type (strings, non-contiguous integers, ...).
        probs: (N, S) source-head probabilities, needed by ``leep`` and ``nce``.
        names: scores to compute, in this order; ``None`` means the default set (:func:`available_scores`:
            the paper's seven), in registration order.  Opt-in scores (``sfda``, ``parc``, ``transrate``,
            ``etran``, ``pactran``, ``knn``, ``linear_probe``, ``imagenet_top1``;
            ``available_scores(include_opt_in=True)``) run when named.
        device: ``None`` runs on the CPU; a torch device (``"cuda"``) moves the dense linear algebra there
            (N-LEEP's k-means start always runs in scikit-learn on the CPU).  On the CPU, torch's thread setting
            applies, except that the small steps of N-LEEP's EM run on one thread, and the covariance
            eigendecomposition and EM's large products too while other processes keep the cores busy (their
            many synchronisations then make several threads 2-15x slower than one).
        timings: when a dict is given, it receives the wall-clock seconds of each score.  Work shared between
            scores (input checks, covariance and its eigendecomposition, class sums) is charged to the first
            score that needs it, so with the default order ``hscore`` carries the covariance eigendecomposition.
        options: ``{score name: {option: value}}``, passed as keyword arguments to that score (see each score's
            docstring, e.g. ``{"parc": {"max_samples": 1000, "seed": 1}, "imagenet_top1": {"top1": 76.1}}``).
            Options of registered scores that are not in ``names`` are checked, then ignored.
        extras: when a dict is given, it receives ``{score name: {key: float}}`` for the scores that report
            extra numbers: ``n_samples`` and ``seed`` of the subsampling scores (``parc``, ``knn``), ``std`` and
            ``n_seeds`` of ``nleep`` with several seeds, ``n_iter`` of ``pactran``.
        failures: when a dict is given, a score that cannot be computed on these inputs is recorded there
            (``{name: reason}``) and left out of the result, and the other scores are still computed, on the same
            shared statistics.  Invalid inputs, unknown names or options still raise.

    Raises:
        ScoreError: unknown names or options, a score that needs ``probs`` when none are given, invalid
            inputs, or a score that cannot be computed on these inputs (the message says which and why).

    Fallbacks are announced with :class:`ScoreWarning` (see each score's docstring).
    """
    requested = list(available_scores()) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in requested if name not in REGISTRY]
    if unknown:
        raise ScoreError(f"unknown score name(s) {unknown}; available: {', '.join(REGISTRY)}")
    per_score = _checked_options(options)
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
        try:
            value, reported = _one_score(name, inputs, per_score.get(name, {}))
        except ScoreError as err:
            if failures is None:
                raise
            failures[name] = str(err)  # the others go on, on the same inputs and shared statistics
            start = time.perf_counter()
            continue
        if timings is not None:
            now = time.perf_counter()
            timings[name] = now - start
            start = now
        results[name] = value
        if extras is not None and reported:
            extras[name] = reported
    return results


def _one_score(name: str, inputs: ScoreInputs, options: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The value of one registered score and the extra numbers it reports; a non-finite value is a ScoreError."""
    outcome = REGISTRY[name].fn(inputs, **options)
    reported = {}
    if isinstance(outcome, ScoreResult):
        outcome, reported = outcome.value, {key: float(v) for key, v in outcome.extras.items()}
    value = float(outcome)
    if not math.isfinite(value):
        raise ScoreError(
            f"score {name!r} is undefined on these inputs (it came out {value}); check for degenerate "
            "features, e.g. all zero"
        )
    return value, reported
