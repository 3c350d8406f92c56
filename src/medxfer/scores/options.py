"""Which scores a command computes and with which options, checked against the registry before any work.

``None`` means the same everywhere: every registered score (opt-in ones included) for names, no options for
options. The score, fine-tune and rank stages all take their names and options through these functions.
"""

from __future__ import annotations

import inspect
from typing import Any

from medxfer.errors import ConfigError
from medxfer.scores.registry import REGISTRY, CheckedOptions, available_scores
from medxfer.scores.registry import score_options as accepted_options

__all__ = ["non_default_options", "score_names", "score_options"]


def score_names(requested: list[str] | None, *, where: str = "score.names") -> list[str]:
    """The score names to compute: every registered one (opt-in scores included) when ``requested`` is None;
    unknown names are an error naming ``where`` (the config key)."""
    known = list(available_scores(include_opt_in=True))
    if requested is None:
        return known
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ConfigError(f"unknown score(s) {unknown} in {where}; registered scores: {known}")
    return list(requested)


def score_options(given: dict[str, Any] | None, model: dict[str, Any], names: list[str], *,
                  where: str = "score.options") -> CheckedOptions:
    """Options of the requested scores (``where`` names the config key in errors), checked against each score's
    signature, plus ``imagenet_top1``'s ``top1`` from the model config's ``imagenet_top1`` unless given; checked
    once here, so the scores do not check them again."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(REGISTRY))
    if unknown:
        raise ConfigError(f"{where} names unknown score(s) {unknown}; registered scores: {list(REGISTRY)}")
    options = {}
    for name in names:
        opts = dict(given.get(name) or {})
        accepted = accepted_options(name)  # None: the score takes any keyword
        bad = [] if accepted is None else sorted(set(opts) - set(accepted))
        if bad:
            raise ConfigError(f"{where}.{name}: unknown option(s) {bad}; {name} accepts {list(accepted or ())}")
        if name == "imagenet_top1" and "top1" not in opts:
            opts["top1"] = model.get("imagenet_top1")
        if opts:
            options[name] = opts
    return CheckedOptions(options)


def _normalised(value: Any) -> Any:
    return tuple(_normalised(v) for v in value) if isinstance(value, (list, tuple)) else value


def non_default_options(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The options that differ from each score's defaults: what makes two cells compute different values (so
    spelling out a default does not make a new cell). ``imagenet_top1``'s ``top1`` is the model's, not an
    option of the cell."""
    out = {}
    for name, opts in options.items():
        if name == "imagenet_top1":
            continue
        params = inspect.signature(REGISTRY[name].fn).parameters
        changed = {k: v for k, v in opts.items()
                   if k not in params or _normalised(v) != _normalised(params[k].default)}
        if changed:
            out[name] = changed
    return out
