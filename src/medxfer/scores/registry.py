"""Registry of transferability scores, so that a new score plugs in with one line.

A score is registered as a function of :class:`~medxfer.scores.inputs.ScoreInputs` (validated inputs plus
lazily computed shared statistics) that returns a float, higher meaning better expected transfer::

    from medxfer.scores.registry import register_score

    def sfda_from_inputs(inputs: ScoreInputs, *, log_prob: bool = False) -> float: ...

    register_score("sfda", sfda_from_inputs, needs_probs=False)

and the module is imported from ``medxfer/scores/__init__.py``.  Keyword parameters after ``inputs`` are the
score's options (``compute_scores(..., options={"sfda": {"log_prob": True}})``); a score may return a
:class:`ScoreResult` instead of a float to report extra numbers (a sample size, a spread over seeds).

:func:`medxfer.scores.compute_scores` runs, when it is not given ``names``, every registered score in the
default set (``default=True``, the paper's seven and any score registered without ``default=False``), in
registration order; opt-in scores (``default=False``) run when named.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Mapping, TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    from medxfer.scores.inputs import ScoreInputs

__all__ = [
    "REGISTRY",
    "ScoreResult",
    "ScoreSpec",
    "available_scores",
    "register_score",
    "score_options",
    "single_score",
]


@dataclass(frozen=True)
class ScoreResult:
    """A score value plus extra numbers worth logging beside it (``{"n_samples": 2000.0, "seed": 0.0}``)."""

    value: float
    extras: dict[str, float] = field(default_factory=dict)


ScoreFn = Callable[..., Union[float, ScoreResult]]


@dataclass(frozen=True)
class ScoreSpec:
    """One registered score: its name, its function of :class:`ScoreInputs`, whether it needs ``probs``, and
    whether :func:`~medxfer.scores.compute_scores` runs it when not given ``names`` (``default``)."""

    name: str
    fn: ScoreFn
    needs_probs: bool = False
    default: bool = True


REGISTRY: dict[str, ScoreSpec] = {}


def register_score(
    name: str, fn: ScoreFn, *, needs_probs: bool = False, replace: bool = False, default: bool = True
) -> ScoreSpec:
    """Register ``fn`` under ``name``; ``needs_probs`` when it reads the source-head probabilities.

    ``default=False`` makes the score opt-in: it runs only when named.  Registering an existing name raises
    unless ``replace=True`` (two modules claiming one name is a bug).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"score names must be identifiers such as 'logme', got {name!r}")
    if name in REGISTRY and not replace:
        raise ValueError(
            f"a score named {name!r} is already registered ({REGISTRY[name].fn.__module__}); "
            "pick another name or pass replace=True"
        )
    spec = ScoreSpec(name=name, fn=fn, needs_probs=needs_probs, default=default)
    REGISTRY[name] = spec
    return spec


def available_scores(*, include_opt_in: bool = False) -> tuple[str, ...]:
    """Names of the registered scores in the default set, in registration order; ``include_opt_in=True``
    adds the opt-in ones (every registered score)."""
    return tuple(name for name, spec in REGISTRY.items() if include_opt_in or spec.default)


class CheckedOptions(dict):
    """Score options already checked against each score's signature (:func:`medxfer.scores.options.score_options`,
    where a command's config is read): :func:`medxfer.scores.compute_scores` does not check them again."""


def score_options(name: str) -> tuple[str, ...] | None:
    """The option names a registered score accepts (its keyword parameters after ``inputs``), in order;
    ``None`` when its function takes ``**kwargs`` (any option)."""
    parameters = list(inspect.signature(REGISTRY[name].fn).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return tuple(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def single_score(
    name: str, features: Any, labels: Any, probs: Any = None, *, device: Any = None, **options: Any
) -> float:
    """One registered score through :func:`~medxfer.scores.compute_scores` (same checks, same guarantees);
    keyword ``options`` go to that score."""
    from medxfer.scores.compute import compute_scores

    return compute_scores(
        features, labels, probs, [name], device=device, options={name: options} if options else None
    )[name]


def split_applicable(names: Iterable[str], *, has_source_head: bool,
                     options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[list[str], list[str]]:
    """``(applicable, not_applicable)`` for one model: without a source head, the scores that read its
    probabilities (LEEP, NCE) do not apply; without a published ImageNet top-1 (option ``top1``),
    ``imagenet_top1`` does not. They are reported as such, never as a NaN or a failure."""
    names = list(names)
    options = options or {}

    def applies(name: str) -> bool:
        if REGISTRY[name].needs_probs and not has_source_head:
            return False
        return not (name == "imagenet_top1" and (options.get(name) or {}).get("top1") is None)

    return [n for n in names if applies(n)], [n for n in names if not applies(n)]
