"""The paper's hyper-parameter search: trial ``i`` is point ``i`` of a 2-D Halton sequence over (lr, wd).

Chaves et al. (2023) fine-tune each (model, dataset) pair with 75 trials of a quasi-random search: the
non-scrambled Halton sequence in two dimensions (bases 2 and 3), each coordinate scaled log-uniformly to its
bounds. Point 0 of the sequence is (0, 0), so trial 0 is ``(lr_min, wd_min)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from scipy.stats import qmc

from medxfer.errors import MedxferError

#: The paper's search space.
LR_BOUNDS = (1e-4, 1e-1)
WD_BOUNDS = (1e-6, 1e-4)


class SearchSpaceError(MedxferError, ValueError):
    """A trial index or a search-space bound that the Halton search cannot use."""


def _check_bounds(bounds: Sequence[float], what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise SearchSpaceError(f"{what}={bounds!r}: expected two numbers [min, max]") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= 0:
        raise SearchSpaceError(f"{what}=[{lo:g}, {hi:g}]: both bounds must be finite and > 0 (the scale is logarithmic)")
    if lo > hi:
        raise SearchSpaceError(f"{what}=[{lo:g}, {hi:g}]: the bounds are inverted; write them as [min, max], e.g. [{hi:g}, {lo:g}]")
    return lo, hi


def _check_trial(i: int) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise SearchSpaceError(f"trial={i!r}: expected a non-negative integer (the index of a Halton point)")
    if i < 0:
        raise SearchSpaceError(f"trial={i}: trials are numbered from 0; expected a non-negative integer")
    return int(i)


def halton_point(i: int) -> tuple[float, float]:
    """Point ``i`` (0-based) of scipy's non-scrambled 2-D Halton sequence, in [0, 1)^2."""
    i = _check_trial(i)
    engine = qmc.Halton(d=2, scramble=False)
    if i:
        engine.fast_forward(i)
    u = engine.random(1)[0]
    return float(u[0]), float(u[1])


def log_uniform(u: float, lo: float, hi: float) -> float:
    """Map ``u`` in [0, 1) to [lo, hi) uniformly on a log scale."""
    return lo * (hi / lo) ** u  # exactly lo at u = 0


def halton_trial(
    i: int, lr_bounds: Sequence[float] = LR_BOUNDS, wd_bounds: Sequence[float] = WD_BOUNDS
) -> tuple[float, float]:
    """The (learning rate, weight decay) of trial ``i``: Halton point ``i`` scaled log-uniformly to the bounds.

    >>> halton_trial(0)
    (0.0001, 1e-06)
    """
    lr_lo, lr_hi = _check_bounds(lr_bounds, "finetune.lr_bounds")
    wd_lo, wd_hi = _check_bounds(wd_bounds, "finetune.wd_bounds")
    u_lr, u_wd = halton_point(i)
    return log_uniform(u_lr, lr_lo, lr_hi), log_uniform(u_wd, wd_lo, wd_hi)
