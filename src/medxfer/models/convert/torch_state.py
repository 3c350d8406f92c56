"""Converters for torch state-dict files (``source.format: torch``): the tensors are torch's already, only their
names differ from the target model's.

The mappings, one per converter:

``torch_positional``
    The file's tensors in file order onto the target's state dict in its order, pair by pair: same count, same
    shapes. Relied on for a torchvision model whose timm twin creates the same tensors in the same order
    (torchvision ``efficientnet_b0`` -> timm ``efficientnet_b0``: 360 entries, 309 of them float tensors).
``torch_strip_prefix``
    Keys starting with the string ``source.strip_prefix`` (e.g. ``"features."``) lose it and must then equal the
    target's keys; keys without the prefix (the package's own extra modules) are dropped.
``torch_rename``
    ``source.rename`` maps source module paths to target module paths, e.g.
    ``{features.0: conv1, features.1: bn1, features.4: layer1}``. A key is renamed by the longest rule whose
    path is the key itself or one of its parents (``features.1`` matches ``features.1.weight``, never
    ``features.10.weight``); keys that no rule matches are dropped; the renamed keys must equal the target's.
``torch_craft_vgg16_bn``
    CRAFT (``craft_mlt_25k.pth``, saved from ``nn.DataParallel``): ``module.basenet.slice{1,2,3,4}.<i>.<p>`` ->
    ``features.<i>.<p>``. CRAFT fills its slices with torchvision ``vgg16_bn().features`` modules under their
    original indices, so slices 1-4 are exactly ``features[:39]`` (12 of the 13 convs); ``slice5`` (CRAFT's
    fc6/fc7 convs) and the U-Net decoder (``upconv*``, ``conv_cls``) are dropped.

A model config passes the options in its ``source`` block::

    source:
      format: torch
      converter: torch_rename
      rename: {features.0: conv1, features.1: bn1, features.4: layer1}

Every converter returns tensors in the target's dtypes (float32 weights, int64 ``num_batches_tracked``), and
raises :class:`ConversionError` naming the unmatched keys on both sides (a target key nothing maps to, a kept
source key the target lacks, a shape that differs).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from medxfer.models.convert import ConversionError, register_converter
from medxfer.models.zoo import ModelError, ModelSpec, load_state_dict_file

__all__ = ["convert_craft_vgg16_bn", "convert_positional", "convert_rename", "convert_strip_prefix"]

_CRAFT_KEY = re.compile(r"module\.basenet\.slice[1-4]\.(\d+\.\w+)")


def _load(source: Path) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(source)
    except ModelError as err:
        raise ConversionError(str(err)) from None


def _show(keys: list[str]) -> str:
    return f"{len(keys)} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"


def _match_names(renamed: dict[str, tuple[str, torch.Tensor]], model: nn.Module, source: Path) -> dict[str, torch.Tensor]:
    """``renamed`` maps target names to (source name, tensor); every target key must be there, with its shape."""
    target = model.state_dict()
    missing = sorted(set(target) - set(renamed))
    unexpected = sorted(f"{renamed[k][0]} -> {k}" for k in set(renamed) - set(target))
    wrong = sorted(
        f"{renamed[k][0]} {tuple(renamed[k][1].shape)} -> {k} {tuple(target[k].shape)}"
        for k in set(renamed) & set(target) if renamed[k][1].shape != target[k].shape
    )
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{source} does not fit {type(model).__name__}: target keys nothing maps to {_show(missing)}; "
            f"source keys the target lacks {_show(unexpected)}; wrong shapes {_show(wrong)}"
        )
    return {k: renamed[k][1].to(target[k].dtype).contiguous() for k in target}


def _option(spec: ModelSpec, name: str, converter: str):
    value = (spec.source or {}).get(name)
    if not value:
        raise ConversionError(f"model {spec.name!r}: converter {converter} needs source.{name} in the model config")
    return value


@register_converter("torch_positional")
def convert_positional(source: Path, model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The file's tensors, in order, onto the target's state-dict entries, in order (same count and shapes)."""
    state = _load(source)
    target = model.state_dict()
    if len(state) != len(target):
        src, tgt = list(state), list(target)
        raise ConversionError(
            f"{source}: {len(state)} tensors, {type(model).__name__} ({spec.arch}) has {len(target)}; "
            f"source keys beyond the target's count {_show(src[len(tgt):])}; "
            f"target keys beyond the source's count {_show(tgt[len(src):])}"
        )
    out = {}
    for (key, value), (tkey, tvalue) in zip(state.items(), target.items()):
        if value.shape != tvalue.shape:
            raise ConversionError(
                f"{source}: tensor #{len(out)} {key} {tuple(value.shape)} does not fit {tkey} {tuple(tvalue.shape)} "
                f"of {spec.arch}; positional mapping impossible"
            )
        out[tkey] = value.to(tvalue.dtype).contiguous()
    return out


@register_converter("torch_strip_prefix")
def convert_strip_prefix(source: Path, model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Keys starting with ``source.strip_prefix``, without it; the other keys are dropped."""
    prefix = _option(spec, "strip_prefix", "torch_strip_prefix")
    state = _load(source)
    renamed = {k[len(prefix):]: (k, v) for k, v in state.items() if k.startswith(prefix)}
    if not renamed:
        raise ConversionError(f"{source}: no key starts with strip_prefix {prefix!r}; its keys: {_show(list(state))}")
    return _match_names(renamed, model, source)


@register_converter("torch_rename")
def convert_rename(source: Path, model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Keys renamed by the longest matching module-path rule of ``source.rename``; unmatched keys are dropped."""
    rules = dict(_option(spec, "rename", "torch_rename"))
    state = _load(source)
    renamed = {}
    for key, value in state.items():
        for old in sorted(rules, key=len, reverse=True):
            if key == old or key.startswith(old + "."):
                new = rules[old] + key[len(old):]
                renamed[new.lstrip(".")] = (key, value)  # a rule to "" strips the path
                break
    if not renamed:
        raise ConversionError(f"{source}: no key matches the rename rules {sorted(rules)}; its keys: {_show(list(state))}")
    return _match_names(renamed, model, source)


@register_converter("torch_craft_vgg16_bn")
def convert_craft_vgg16_bn(source: Path, model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """CRAFT's VGG16-BN trunk: ``module.basenet.slice{1..4}.<i>.<p>`` -> ``features.<i>.<p>``; the rest dropped."""
    state = _load(source)
    renamed = {}
    for key, value in state.items():
        m = _CRAFT_KEY.fullmatch(key)
        if m:
            renamed[f"features.{m.group(1)}"] = (key, value)
    if not renamed:
        raise ConversionError(f"{source}: no key of the form module.basenet.slice<1-4>.<i>.<p>; its keys: {_show(list(state))}")
    return _match_names(renamed, model, source)
