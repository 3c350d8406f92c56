"""Registry of transferability scores, so that a new score plugs in with one line.

A score is registered as a function of :class:`~medxfer.scores.inputs.ScoreInputs` (validated inputs plus
lazily computed shared statistics) that returns a float, higher meaning better expected transfer::

    from medxfer.scores.registry import register_score

    def sfda_from_inputs(inputs: ScoreInputs) -> float: ...

    register_score("sfda", sfda_from_inputs, needs_probs=False)

and the module is imported from ``medxfer/scores/__init__.py``.  :func:`medxfer.scores.compute_scores` runs
every registered score, in registration order, when it is not given ``names``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from medxfer.scores.inputs import ScoreInputs

__all__ = ["REGISTRY", "ScoreSpec", "available_scores", "register_score", "single_score"]


@dataclass(frozen=True)
class ScoreSpec:
    """One registered score: its name, its function of :class:`ScoreInputs`, and whether it needs ``probs``."""

    name: str
    fn: Callable[["ScoreInputs"], float]
    needs_probs: bool = False


REGISTRY: dict[str, ScoreSpec] = {}


def register_score(
    name: str, fn: Callable[["ScoreInputs"], float], *, needs_probs: bool = False, replace: bool = False
) -> ScoreSpec:
    """Register ``fn`` under ``name``; ``needs_probs`` when it reads the source-head probabilities.

    Registering an existing name raises unless ``replace=True`` (two modules claiming one name is a bug).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"score names must be identifiers such as 'logme', got {name!r}")
    if name in REGISTRY and not replace:
        raise ValueError(
            f"a score named {name!r} is already registered ({REGISTRY[name].fn.__module__}); "
            "pick another name or pass replace=True"
        )
    spec = ScoreSpec(name=name, fn=fn, needs_probs=needs_probs)
    REGISTRY[name] = spec
    return spec


def available_scores() -> tuple[str, ...]:
    """Names of the registered scores, in registration order."""
    return tuple(REGISTRY)


def single_score(name: str, features: Any, labels: Any, probs: Any = None, *, device: Any = None) -> float:
    """One registered score through :func:`~medxfer.scores.compute_scores` (same checks, same guarantees)."""
    from medxfer.scores.compute import compute_scores

    return compute_scores(features, labels, probs, [name], device=device)[name]
