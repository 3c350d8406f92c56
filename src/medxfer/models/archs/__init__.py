"""Architectures timm does not have, named ``medxfer:<name>`` in a model config's ``arch``.

Each module registers a builder with :func:`register_arch`::

    build(num_classes: int, *, source: Path | None, **arch_kwargs) -> nn.Module

``num_classes`` is the source head's size (0: no head); ``source`` is the file extracted from the model's
package archive, for architectures defined by that file (an ONNX graph). The module returned behaves like a
timm classifier, because extraction and fine-tuning call exactly these: ``forward(x)`` (logits),
``forward_features(x)``, ``forward_head(x, pre_logits=True)`` (pooled features, ``num_features`` wide),
``get_classifier()``, ``reset_classifier(num_classes)`` and the attribute ``num_features``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["ARCHS", "PREFIX", "build_arch", "register_arch"]

PREFIX = "medxfer:"
_MODULES = ("vgg_features", "vgg_plain", "keras_xception", "inception_tf", "onnx_module")

ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    """Decorator: register ``fn`` as the builder of ``medxfer:<name>``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHS[name] = fn
        return fn

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def build_arch(arch: str, num_classes: int, *, source: Path | None = None, **kwargs) -> nn.Module:
    """Build ``medxfer:<name>``; an error lists the known names."""
    name = arch[len(PREFIX):]
    if name not in ARCHS:
        _load_all()
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; medxfer defines: {sorted(PREFIX + n for n in ARCHS)}")
    return ARCHS[name](num_classes, source=source, **kwargs)
