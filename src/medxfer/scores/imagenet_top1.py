"""ImageNet top-1: a baseline that ignores the target data and returns the model's published accuracy."""

from __future__ import annotations

import math
from typing import Any

from medxfer.scores.errors import ScoreError
from medxfer.scores.inputs import ScoreInputs
from medxfer.scores.registry import register_score, single_score as _single_score

__all__ = ["imagenet_top1", "imagenet_top1_from_inputs"]


def imagenet_top1_from_inputs(inputs: ScoreInputs, *, top1: float | None = None) -> float:
    """The ``top1`` option, checked (see :func:`imagenet_top1`)."""
    if top1 is None:
        raise ScoreError(
            "imagenet_top1 needs the model's published ImageNet top-1 accuracy, but the model config's "
            "imagenet_top1 is not set: set model.imagenet_top1=<percent> (e.g. model.imagenet_top1=76.1), or "
            "pass options={'imagenet_top1': {'top1': <percent>}}, or leave imagenet_top1 out of the scores"
        )
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1) or not 0 <= top1 <= 100:
        raise ScoreError(
            f"imagenet_top1: top1 (model.imagenet_top1) must be a top-1 accuracy in percent, 0 to 100, got {top1!r}"
        )
    return float(top1)


def imagenet_top1(features: Any, labels: Any, *, device: Any = None, top1: float | None = None) -> float:
    r"""The model's published ImageNet top-1 accuracy, in percent: a baseline "score" that ignores the target
    features and labels (they are still validated), asking whether transferability scores beat simply
    preferring the better ImageNet model (cf. Kornblith et al., *Do Better ImageNet Models Transfer Better?*,
    CVPR 2019).

    .. math::
        \mathrm{score} = \mathrm{top1}

    ``top1`` is an option; the score stage passes the model config's ``imagenet_top1``.  Higher is better.
    Raises :class:`ScoreError` when ``top1`` is missing (None) or outside [0, 100].

    Shape:
        - features: (N, D), validated, unused.
        - labels: (N,), validated, unused.
        - score: scalar in [0, 100].
    """
    return _single_score("imagenet_top1", features, labels, device=device, top1=top1)


register_score("imagenet_top1", imagenet_top1_from_inputs, default=False)
