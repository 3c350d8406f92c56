"""Scoring one set of inputs as a stage does: every requested score, a failing one recorded with its reason
while the others go on, the documented fallbacks collected as notes; and single-thread determinism."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator


@contextlib.contextmanager
def single_thread(enabled: bool) -> Iterator[None]:
    """Run torch on one CPU thread: multi-threaded reductions (MKL) change the last bits of the scores from
    run to run; with one thread a cell reproduces exactly on the same machine."""
    if not enabled:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ScoreOutcome:
    """What :func:`compute_isolated` produced: values of the scores that worked, their timings and extras, the
    reason of each that failed, and the texts of the :class:`~medxfer.scores.ScoreWarning` fallbacks."""

    values: dict[str, float]
    timings: dict[str, float]
    extras: dict[str, dict[str, float]]
    failures: dict[str, str]
    notes: list[str]


def compute_isolated(features: Any, labels: Any, probs: Any, names: list[str], *, device: str | None = None,
                     options: dict[str, dict[str, Any]] | None = None) -> ScoreOutcome:
    """Every score of ``names`` on one set of inputs (shared statistics computed once); a score that fails is
    recorded with its reason while the others go on, and inputs no score can use fail every score."""
    from medxfer.scores import ScoreError, ScoreWarning, compute_scores

    values, timings, extras, failures = {}, {}, {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScoreWarning)
        try:
            values = compute_scores(features, labels, probs, names, device=device, timings=timings, options=options,
                                    extras=extras, failures=failures)
        except ScoreError as err:  # the inputs themselves (e.g. one class): no score can be computed
            failures = {name: str(err) for name in names}
    notes = [str(w.message) for w in caught if issubclass(w.category, ScoreWarning)]
    return ScoreOutcome(values, timings, extras, failures, notes)
