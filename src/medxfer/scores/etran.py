"""ETran's energy score: the log-sum-exp of the features, averaged over the samples where it is lowest."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from medxfer.scores.errors import ScoreError, ScoreWarning
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["ENERGY_PERCENT", "etran", "etran_from_inputs", "sample_energies"]

ENERGY_PERCENT = 0.5
_BLOCK_ROWS = 2048


def sample_energies(features: np.ndarray) -> np.ndarray:
    """(N,) float64 log sum_d exp(f_d) of each row, converted to float64 one block of rows at a time."""
    import torch

    n = features.shape[0]
    out = np.empty(n)
    for start in range(0, n, _BLOCK_ROWS):
        block = torch.from_numpy(np.asarray(features[start : start + _BLOCK_ROWS], dtype=np.float64))
        out[start : start + len(block)] = torch.logsumexp(block, dim=1).numpy()
    return out


def etran_from_inputs(inputs: ScoreInputs, *, percent: float = ENERGY_PERCENT) -> float:
    """ETran energy score of validated inputs (see :func:`etran`)."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 100:
        raise ScoreError(f"etran: option percent must be a number in (0, 100], got {percent!r}")
    energies = np.sort(sample_energies(inputs.raw_features))
    n = inputs.n_samples
    count = math.floor(n * percent / 100)
    if count == 0:
        warnings.warn(
            f"ETran's energy score averages the lowest {percent:g} % of the samples, none of N = {n}; it uses the "
            "single lowest sample instead (the paper's code would return NaN)",
            ScoreWarning,
            stacklevel=3,
        )
        count = 1
    return float(np.mean(energies[:count]))


def etran(features: Any, labels: Any, *, device: Any = None, percent: float = ENERGY_PERCENT) -> float:
    r"""The energy score of ETran, Gholami et al., *ETran: Energy-Based Transferability Estimation* (ICCV 2023),
    as in the paper's code (``Energy_Score(features, 0.5, "bot")`` of ``mgholamikn/ETran``).

    The features themselves are read as logits (no head, temperature 1): each sample's energy score is the
    negative free energy

    .. math::
        s(x) = -E(x) = \log \sum_{d=1}^{D} \exp f_d(x),

    and the score is the mean of s over the floor(N p / 100) samples with the lowest s, p = 0.5 (``percent``
    option; the code's ``int(percent * 10) * N // 1000``, equal for multiples of 0.1).  Higher is better (the
    paper ranks models by it in decreasing order).  ETran's full score adds an LDA and an SVD term after
    min-max scaling across the models of a study; only the energy term is computed here.  The labels are not
    used (they are still validated).

    Fallback: with N < 100 / p (N < 200 by default: no sample in the lowest p %) the single lowest sample is used and
    a :class:`ScoreWarning` is emitted (the paper's code returns NaN).

    Shape:
        - features: (N, D), float32 or float64 (computed in float64).
        - labels: (N,), any hashable values (unused).
        - score: scalar.
    """
    return _single_score("etran", features, labels, device=device, percent=percent)


register_score("etran", etran_from_inputs, default=False)
