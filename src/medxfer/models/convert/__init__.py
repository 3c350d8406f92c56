"""Converters from the weight formats that registry packages ship to a torch state dict, TensorFlow-free.

One module per format. Each registers functions under a converter name with :func:`register_converter`; a
model config's ``source.converter`` names one. A converter has the signature::

    convert(source: Path, model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]

``source`` is the file (or folder, for multi-file formats such as tfjs) extracted from the package archive;
``model`` is the freshly built, randomly initialised target model (so the converter can read the target's
keys and shapes); the result must load into ``model`` with ``load_state_dict(strict=True)``. A converter
states in its docstring the mapping it relies on, and raises :class:`ConversionError` listing the unmatched
names when a file does not fit.
"""

from __future__ import annotations

import importlib
from typing import Callable

from medxfer.errors import MedxferError

__all__ = ["CONVERTERS", "ConversionError", "get_converter", "register_converter"]

# modules imported on first use, so that onnx / h5py / tensorboard load only for the formats a study needs
_MODULES = ("torch_state", "tf_graphdef", "tfjs", "keras3", "onnx_graph")

CONVERTERS: dict[str, Callable] = {}


class ConversionError(MedxferError, ValueError):
    """A weights file does not fit the mapping a converter relies on."""


def register_converter(name: str):
    """Decorator: register ``fn`` as converter ``name``."""

    def wrap(fn: Callable) -> Callable:
        if name in CONVERTERS and CONVERTERS[name] is not fn:
            raise ValueError(f"converter {name!r} is registered twice")
        CONVERTERS[name] = fn
        return fn

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def get_converter(name: str) -> Callable:
    """The converter registered as ``name``; an error lists the known ones."""
    if name not in CONVERTERS:
        _load_all()
    if name not in CONVERTERS:
        raise ConversionError(f"unknown converter {name!r}; known converters: {sorted(CONVERTERS)}")
    return CONVERTERS[name]
