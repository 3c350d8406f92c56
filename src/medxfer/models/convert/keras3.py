"""Keras weights to torch state dicts, read with h5py alone (no TensorFlow, no Keras).

Three layouts are read into one list of :class:`KerasLayer` (a layer's own name, class, config and variables):

* a Keras 3 ``.keras`` zip (``config.json`` + ``model.weights.h5``), or a folder holding those two files. The
  weights file names a layer's group after its *class*, not its name: in each model, the k-th layer of class
  ``Conv2D`` in the config's layer order is ``layers/conv2d_k`` (``layers/conv2d`` for the first), a nested model
  is ``layers/functional`` with its own ``layers/...`` inside, and variables are ``vars/0, vars/1, ...`` in the
  layer's creation order (``Conv2D``: kernel, bias; ``BatchNormalization``: gamma, beta, moving_mean,
  moving_variance; ...). Keras >= 3.5 also writes the layer's name on its ``vars`` group, which is checked.
* a Keras 3 ``.weights.h5`` without a config (a subclassed model's ``save_weights``): groups follow the model's
  attribute names; a layer is named by the ``name`` on its ``vars`` group.
* a legacy Keras ``.h5`` model file (``model_config`` attribute, ``model_weights/<layer>/.../<var>``): variables
  are named there (``kernel``, ``gamma``, ...).

Kernels are channels-last: conv ``(kh, kw, in, out)`` becomes torch ``(out, in, kh, kw)``, a depthwise kernel
``(kh, kw, c, 1)`` becomes ``(c, 1, kh, kw)``, a dense kernel ``(in, out)`` becomes ``(out, in)``. A Keras
BatchNormalization divides by ``sqrt(var + epsilon)``: where the target's eps differs, ``epsilon - eps`` is added
to the running variance, which gives the same output exactly.

Converters (one per target family) map the layer names of ``keras.applications`` models onto timm's keys and are
documented one by one below. Each ends in :func:`_finish`, which lists target keys left unset and Keras layers
left unused.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from medxfer.models.convert import ConversionError, register_converter

__all__ = ["KerasLayer", "read_keras_layers"]


@dataclass
class KerasLayer:
    """One Keras layer: its own ``name``, ``kind`` (Keras class), ``config``, the ``model`` it sits in (the
    nested model's name; ``""`` at the top level), ``weights`` by variable name, and ``where`` in the file."""

    name: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    where: str = ""


# variable order of a Keras 3 layer's vars/0, vars/1, ... (optional ones dropped by the config flags below)
_VARIABLES = {
    "Conv2D": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Normalization": ("mean", "variance", "count"),
}
_MODELS = ("Functional", "Sequential", "Model")


def _variable_names(kind: str, config: dict, count: int) -> list[str]:
    names = list(_VARIABLES.get(kind, ()))
    if not config.get("use_bias", True) and "bias" in names:
        names.remove("bias")
    if kind == "BatchNormalization":
        if not config.get("scale", True):
            names.remove("gamma")
        if not config.get("center", True):
            names.remove("beta")
    if len(names) != count:  # a layer class this module does not know: keep the positions
        return [str(i) for i in range(count)]
    return names


def snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``: the group name a layer of class ``name`` gets in a weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def read_keras_layers(source: str | Path) -> list[KerasLayer]:
    """The layers of a ``.keras`` zip (or a folder with its two files), a ``.weights.h5`` or a legacy ``.h5``
    model file, nested models flattened in place, in the config's order (file order for a bare weights file)."""
    source = Path(source)
    if source.is_dir():
        config_path, weights_path = source / "config.json", source / "model.weights.h5"
        if not (config_path.is_file() and weights_path.is_file()):
            raise ConversionError(f"{source}: a folder must hold config.json and model.weights.h5 (an unpacked .keras file)")
        with h5py.File(weights_path, "r") as h5:
            return _keras3_layers(json.loads(config_path.read_text()), h5, source)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise ConversionError(f"{source}: not a .keras file (members {sorted(names)}; need config.json and model.weights.h5)")
            config = json.loads(zf.read("config.json"))
            data = io.BytesIO(zf.read("model.weights.h5"))
        with h5py.File(data, "r") as h5:
            return _keras3_layers(config, h5, source)
    if not h5py.is_hdf5(source):
        raise ConversionError(f"{source}: neither a .keras zip nor an HDF5 weights file")
    with h5py.File(source, "r") as h5:
        if "model_config" in h5.attrs:
            return _legacy_layers(h5, source)
        return _bare_weights_layers(h5, source)


def _layer_list(node: dict) -> list[dict]:
    return node.get("config", {}).get("layers", [])


def _keras3_layers(config: dict, h5: h5py.File, source: Path) -> list[KerasLayer]:
    layers: list[KerasLayer] = []
    claimed: set[str] = set()

    def walk(node: dict, group: str, model: str) -> None:
        counters: dict[str, int] = {}
        for entry in _layer_list(node):
            kind, cfg = entry["class_name"], entry.get("config", {})
            base = snake_case(kind)
            counters[base] = counters.get(base, -1) + 1
            where = f"{group}/layers/{base}" + (f"_{counters[base]}" if counters[base] else "")
            if kind in _MODELS:
                walk(entry, where, cfg.get("name", ""))
                continue
            layer = KerasLayer(cfg.get("name", ""), kind, cfg, model, {}, where)
            vars_group = h5.get(f"{where}/vars")
            if vars_group is not None:
                stored = vars_group.attrs.get("name")
                if stored is not None and stored != layer.name:
                    raise ConversionError(f"{source}: {where} holds layer {stored!r}, the config's order puts {layer.name!r} there")
                keys = sorted(vars_group.keys(), key=int)
                names = _variable_names(kind, cfg, len(keys))
                layer.weights = {n: np.asarray(vars_group[k][()], dtype=np.float32) for n, k in zip(names, keys)}
                if keys:
                    claimed.add(where)
            layers.append(layer)

    walk(config, "", "")
    # variables the config order did not reach mean the naming rule did not hold for this file
    groups: list[str] = []
    h5.visit(lambda key: groups.append("/" + key[: -len("/vars")]) if key.endswith("/vars") else None)
    stray = sorted(g for g in groups if g not in claimed and len(h5[g[1:] + "/vars"]) and not g.startswith("/optimizer"))
    if stray:
        raise ConversionError(f"{source}: weights groups that no layer of config.json maps to: {stray[:12]}")
    return layers


def _legacy_layers(h5: h5py.File, source: Path) -> list[KerasLayer]:
    config = json.loads(h5.attrs["model_config"])
    root = h5["model_weights"] if "model_weights" in h5 else h5
    found: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for top in root:
        group = root[top]
        for wname in group.attrs.get("weight_names", []):
            wname = wname.decode() if isinstance(wname, bytes) else str(wname)
            parts = wname.split("/")
            owner = top if len(parts) < 2 or parts[-2] == top else parts[-2]
            found.setdefault((top, owner), {})[parts[-1].split(":")[0]] = np.asarray(group[wname][()], dtype=np.float32)
    layers: list[KerasLayer] = []

    def walk(node: dict, top: str | None, model: str) -> None:
        for entry in _layer_list(node):
            kind, cfg = entry["class_name"], entry.get("config", {})
            name = cfg.get("name", "")
            here = top or name
            if kind in _MODELS:
                walk(entry, here, name)
                continue
            weights = found.pop((here, name), {})
            if kind == "DepthwiseConv2D" and "depthwise_kernel" in weights:  # Keras 2 names it so
                weights["kernel"] = weights.pop("depthwise_kernel")
            layers.append(KerasLayer(name, kind, cfg, model, weights, f"model_weights/{here}/{name}"))

    walk(config, None, "")
    if found:
        raise ConversionError(f"{source}: weights of layers model_config does not name: {sorted(f'{t}/{n}' for t, n in found)[:12]}")
    return layers


def _bare_weights_layers(h5: h5py.File, source: Path) -> list[KerasLayer]:
    def natural(key: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]

    groups: list[str] = []
    h5.visit(lambda key: groups.append(key[: -len("/vars")]) if key.endswith("/vars") and not key.startswith("optimizer") else None)
    groups = [g for g in groups if len(h5[g + "/vars"])]  # layers without variables (pools) have empty groups
    layers = []
    for where in sorted(groups, key=natural):
        vars_group = h5[f"{where}/vars"]
        name = vars_group.attrs.get("name", where)
        keys = sorted(vars_group.keys(), key=int)
        layers.append(KerasLayer(str(name), "", {}, "", {k: np.asarray(vars_group[k][()], dtype=np.float32) for k in keys}, where))
    if not layers:
        raise ConversionError(f"{source}: no Keras weights found (no */vars groups)")
    return layers


# ----------------------------------------------------------------------------------------------------------------
# tensor layout


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _conv_weight(kernel: np.ndarray) -> torch.Tensor:
    return _t(kernel.transpose(3, 2, 0, 1))


def _depthwise_weight(kernel: np.ndarray) -> torch.Tensor:
    kh, kw, c, m = kernel.shape
    return _t(kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


class _Builder:
    """Collects the target state dict, remembering which Keras layers were used."""

    def __init__(self, model: nn.Module, layers: list[KerasLayer], source: Path):
        self.model, self.source = model, source
        self.target = model.state_dict()
        self.by_name: dict[str, KerasLayer] = {}
        for layer in layers:
            if layer.weights:
                if layer.name in self.by_name:
                    raise ConversionError(f"{source}: two layers named {layer.name!r} ({self.by_name[layer.name].where}, {layer.where})")
                self.by_name[layer.name] = layer
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def layer(self, name: str) -> KerasLayer:
        if name not in self.by_name:
            raise ConversionError(f"{self.source}: no Keras layer {name!r} with weights; layers: {sorted(self.by_name)[:20]} ...")
        self.used.add(name)
        return self.by_name[name]

    def var(self, layer: KerasLayer, var: str) -> np.ndarray:
        if var not in layer.weights:
            raise ConversionError(f"{self.source}: layer {layer.name!r} ({layer.where}) has no variable {var!r}; it has {sorted(layer.weights)}")
        return layer.weights[var]

    def conv(self, name: str, prefix: str) -> None:
        layer = self.layer(name)
        self.out[f"{prefix}.weight"] = _conv_weight(self.var(layer, "kernel"))
        if "bias" in layer.weights:
            self.out[f"{prefix}.bias"] = _t(layer.weights["bias"])

    def depthwise(self, name: str, prefix: str) -> None:
        layer = self.layer(name)
        self.out[f"{prefix}.weight"] = _depthwise_weight(self.var(layer, "kernel"))
        if "bias" in layer.weights:
            self.out[f"{prefix}.bias"] = _t(layer.weights["bias"])

    def separable(self, name: str, depthwise: str, pointwise: str) -> None:
        layer = self.layer(name)
        self.out[f"{depthwise}.weight"] = _depthwise_weight(self.var(layer, "depthwise_kernel"))
        self.out[f"{pointwise}.weight"] = _conv_weight(self.var(layer, "pointwise_kernel"))
        if "bias" in layer.weights:
            self.out[f"{pointwise}.bias"] = _t(layer.weights["bias"])

    def dense(self, layer: KerasLayer, prefix: str) -> None:
        self.used.add(layer.name)
        self.out[f"{prefix}.weight"] = _t(self.var(layer, "kernel").T)
        self.out[f"{prefix}.bias"] = _t(self.var(layer, "bias"))

    def bn(self, name: str, prefix: str) -> None:
        layer = self.layer(name)
        mean, var = self.var(layer, "moving_mean"), self.var(layer, "moving_variance")
        try:
            eps = float(self.model.get_submodule(prefix).eps)
        except AttributeError:
            raise ConversionError(f"{self.source}: Keras layer {name!r} maps to {prefix!r}, which is not a norm layer of the target") from None
        keras_eps = float(layer.config.get("epsilon", 1e-3))
        self.out[f"{prefix}.weight"] = _t(layer.weights.get("gamma", np.ones_like(mean)))
        self.out[f"{prefix}.bias"] = _t(layer.weights.get("beta", np.zeros_like(mean)))
        self.out[f"{prefix}.running_mean"] = _t(mean)
        self.out[f"{prefix}.running_var"] = _t(var + (keras_eps - eps))
        if f"{prefix}.num_batches_tracked" in self.target:
            self.out[f"{prefix}.num_batches_tracked"] = torch.zeros_like(self.target[f"{prefix}.num_batches_tracked"])

    def finish(self, dropped: set[str] = frozenset()) -> dict[str, torch.Tensor]:
        """The state dict, after checking that it fills every target key with the right shape and uses every
        Keras layer with weights (but those in ``dropped``, which the target has no place for by design)."""
        missing = sorted(set(self.target) - set(self.out))
        unexpected = sorted(set(self.out) - set(self.target))
        wrong = sorted(f"{k} {tuple(self.out[k].shape)} vs {tuple(self.target[k].shape)}" for k in set(self.out) & set(self.target)
                       if self.out[k].shape != self.target[k].shape)
        unused = sorted(set(self.by_name) - self.used - set(dropped))
        if missing or unexpected or wrong or unused:
            def show(items):
                return f"{len(items)} [{', '.join(items[:10])}{', ...' if len(items) > 10 else ''}]"
            raise ConversionError(
                f"{self.source} does not fit {type(self.model).__name__}: target keys not filled {show(missing)}, "
                f"keys the target lacks {show(unexpected)}, wrong shapes {show(wrong)}, Keras layers not used {show(unused)}"
            )
        return {k: self.out[k].to(self.target[k].dtype) for k in self.target}


def _module_prefix(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ConversionError(f"{type(model).__name__}: its classifier is not one of its modules")


def _head(b: _Builder, head_layers: list[KerasLayer]) -> set[str]:
    """Map the Keras layers after the backbone (its ``Dense`` stack) onto the target's classifier.

    The k-th Dense goes to the k-th ``nn.Linear`` of ``model.get_classifier()``; hidden Dense layers must use ReLU
    (what the target's MLP applies); the last may be linear or softmax (the target returns logits, whose softmax
    is the Keras output). A target without a classifier (``head: none``) drops the whole Keras head; the names of
    the dropped layers are returned."""
    weighted = [layer for layer in head_layers if layer.weights]
    classifier = b.model.get_classifier()
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return {layer.name for layer in weighted}
    dense = [layer for layer in weighted if layer.kind == "Dense"]
    others = [f"{layer.name} ({layer.kind})" for layer in weighted if layer.kind != "Dense"]
    if others or len(dense) != len(linears):
        raise ConversionError(
            f"{b.source}: the Keras head [{', '.join(f'{x.name} ({x.kind})' for x in weighted)}] does not fit the target's classifier "
            f"({len(linears)} linear layers){'; not representable: ' + ', '.join(others) if others else ''}"
        )
    for i, (layer, linear) in enumerate(zip(dense, linears)):
        act = layer.config.get("activation", "linear")
        last = i == len(dense) - 1
        if (last and act not in ("linear", "softmax", None)) or (not last and act != "relu"):
            raise ConversionError(f"{b.source}: head layer {layer.name!r} has activation {act!r}; the target applies "
                                  f"{'nothing (logits)' if last else 'ReLU'} there")
        b.dense(layer, _module_prefix(b.model, linear))
    return set()


def _check_normalization(b: _Builder, layers: list[KerasLayer], spec) -> set[str]:
    """A ``Normalization`` layer in front of the backbone holds the input statistics (0-255 pixel units); the
    model config's ``data.mean/std`` must say the same, in [0, 1] units, because the target has no such layer."""
    norms = [layer for layer in layers if layer.kind == "Normalization" and layer.weights]
    data = (getattr(spec, "data", None) or {}) if spec is not None else {}
    for layer in norms:
        mean = b.var(layer, "mean") / 255.0
        std = np.sqrt(np.maximum(b.var(layer, "variance"), 0.0)) / 255.0
        want_mean, want_std = data.get("mean"), data.get("std")
        if want_mean is None or want_std is None or not (
            np.allclose(mean, want_mean, atol=1e-4) and np.allclose(std, want_std, atol=1e-4)
        ):
            raise ConversionError(
                f"{b.source}: Keras layer {layer.name!r} normalises the input with mean {np.round(mean, 5).tolist()} and std "
                f"{np.round(std, 5).tolist()} (in [0,1] units); the model config's data has mean {want_mean}, std {want_std}"
            )
    return {layer.name for layer in norms}


def _backbone_split(layers: list[KerasLayer], marker: str, source: Path) -> tuple[list[KerasLayer], list[KerasLayer]]:
    """The layers of the nested model holding ``marker`` (the backbone) and the layers outside it."""
    owner = next((layer.model for layer in layers if layer.name == marker), None)
    if owner is None:
        raise ConversionError(f"{source}: no layer {marker!r}; is it the right architecture? layers: {[x.name for x in layers][:20]} ...")
    inside = [layer for layer in layers if layer.model == owner]
    return inside, [layer for layer in layers if layer.model != owner]


# ----------------------------------------------------------------------------------------------------------------
# converters


@register_converter("keras_xception")
def convert_xception(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """``keras.applications.Xception`` (inside a ``.keras`` model) to timm ``legacy_xception`` keys (or
    ``medxfer:keras_xception``, the same keys with Keras's padding).

    Entry flow ``block1_conv{1,2}`` (+ ``_bn``) -> ``conv{1,2}``/``bn{1,2}``; Keras block b = 2..13 -> timm
    ``block{b-1}``: ``block{b}_sepconv{j}`` -> ``rep.{3j-2}`` (depthwise ``.conv1``, ``.pointwise``) and its
    ``_bn`` -> ``rep.{3j-1}``; timm's block1 has no leading ReLU, so there j maps to ``rep.{3j-3}``/``rep.{3j-2}``.
    The four residual 1x1 convs and their BNs carry automatic names (``conv2d_k``, ``batch_normalization_k``) and
    come after their block's separable convs in the config, so they are told apart by shape: the residual conv
    (in -> out) goes to the timm block whose ``skip`` has that shape, its BN (out channels) to that ``skipbn``.
    Exit flow ``block14_sepconv{1,2}`` -> ``conv3``/``conv4`` (+ ``bn3``/``bn4``). The Dense layers after the
    backbone go to the classifier (see :func:`_head`); a ``Normalization`` input layer must equal ``data.mean/std``.
    """
    source = Path(source)
    layers = read_keras_layers(source)
    backbone, outside = _backbone_split(layers, "block1_conv1", source)
    b = _Builder(model, layers, source)
    dropped = _check_normalization(b, outside, spec)
    b.conv("block1_conv1", "conv1")
    b.bn("block1_conv1_bn", "bn1")
    b.conv("block1_conv2", "conv2")
    b.bn("block1_conv2_bn", "bn2")
    for kb in range(2, 14):
        tb = kb - 1
        reps = 3 if 5 <= kb <= 12 else 2
        shift = 3 if tb == 1 else 2
        for j in range(1, reps + 1):
            rep = f"block{tb}.rep.{3 * j - shift}"
            b.separable(f"block{kb}_sepconv{j}", f"{rep}.conv1", f"{rep}.pointwise")
            b.bn(f"block{kb}_sepconv{j}_bn", f"block{tb}.rep.{3 * j - shift + 1}")
    for j in (1, 2):
        b.separable(f"block14_sepconv{j}", f"conv{j + 2}.conv1", f"conv{j + 2}.pointwise")
        b.bn(f"block14_sepconv{j}_bn", f"bn{j + 2}")
    # residual convs: automatic names, matched by (in, out) channels to the timm skip convs
    skips = {tuple(v.shape[:2]): k[: -len(".skip.weight")] for k, v in b.target.items() if k.endswith(".skip.weight")}
    unnamed = [x for x in backbone if x.weights and not x.name.startswith("block")]
    for layer in (x for x in unnamed if x.kind == "Conv2D"):
        kh, kw, cin, cout = b.var(layer, "kernel").shape
        block = skips.pop((cout, cin), None)
        if block is None:
            raise ConversionError(f"{source}: residual conv {layer.name!r} ({cin} -> {cout}) fits no skip conv of the target")
        b.conv(layer.name, f"{block}.skip")
        bns = [x for x in unnamed if x.kind == "BatchNormalization" and b.var(x, "moving_mean").shape == (cout,)]
        if len(bns) != 1:
            raise ConversionError(f"{source}: {len(bns)} unnamed BatchNormalization layers with {cout} channels, expected 1 for {layer.name!r}")
        b.bn(bns[0].name, f"{block}.skipbn")
    dropped |= _head(b, [x for x in outside if x.kind != "Normalization"])
    return b.finish(dropped)


@register_converter("keras_densenet121")
def convert_densenet121(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """``keras.applications.DenseNet121`` to timm ``densenet121`` keys (torchvision's layout).

    ``conv1_conv``/``conv1_bn`` -> ``features.conv0``/``norm0``; ``conv{b}_block{l}_0_bn``, ``_1_conv``,
    ``_1_bn``, ``_2_conv`` -> ``features.denseblock{b-1}.denselayer{l}.norm1``, ``conv1``, ``norm2``, ``conv2``
    (b = 2..5); ``pool{b}_bn``/``pool{b}_conv`` -> ``features.transition{b-1}.norm``/``conv``; ``bn`` ->
    ``features.norm5``. Keras's BN epsilon 1.001e-5 is folded into the running variance. Keras pads with zeros
    before its valid convs/max-pool and torch pads the same amounts (the max-pool follows a ReLU, so zero and -inf
    padding agree). Dense layers after the backbone -> ``classifier`` (see :func:`_head`).
    """
    source = Path(source)
    layers = read_keras_layers(source)
    _, outside = _backbone_split(layers, "conv1_conv", source)
    b = _Builder(model, layers, source)
    dropped = _check_normalization(b, outside, spec)
    b.conv("conv1_conv", "features.conv0")
    b.bn("conv1_bn", "features.norm0")
    for kb in range(2, 6):
        block = f"features.denseblock{kb - 1}"
        n = sum(1 for k in b.target if k.startswith(f"{block}.") and k.endswith(".conv1.weight"))
        if n == 0:
            raise ConversionError(f"{source}: the target has no {block}")
        for i in range(1, n + 1):
            keras, torch_ = f"conv{kb}_block{i}", f"{block}.denselayer{i}"
            b.bn(f"{keras}_0_bn", f"{torch_}.norm1")
            b.conv(f"{keras}_1_conv", f"{torch_}.conv1")
            b.bn(f"{keras}_1_bn", f"{torch_}.norm2")
            b.conv(f"{keras}_2_conv", f"{torch_}.conv2")
        if kb < 5:
            b.bn(f"pool{kb}_bn", f"features.transition{kb - 1}.norm")
            b.conv(f"pool{kb}_conv", f"features.transition{kb - 1}.conv")
    b.bn("bn", "features.norm5")
    dropped |= _head(b, [x for x in outside if x.kind != "Normalization"])
    return b.finish(dropped)


@register_converter("keras_mobilenetv2")
def convert_mobilenetv2(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """``keras.applications.MobileNetV2`` to timm ``mobilenetv2_*`` keys (build it with ``pad_type='same'`` and
    ``bn_eps=1e-3`` to match Keras's padding and BN).

    ``Conv1``/``bn_Conv1`` -> ``conv_stem``/``bn1``; ``expanded_conv_{depthwise,project}`` (+ ``_BN``) ->
    ``blocks.0.0.conv_dw``/``bn1``, ``conv_pw``/``bn2``; ``block_{i}_{expand,depthwise,project}`` (+ ``_BN``),
    i = 1..16 -> the i-th inverted residual after the first (timm's ``blocks.s.j`` in order):
    ``conv_pw``/``bn1``, ``conv_dw``/``bn2``, ``conv_pwl``/``bn3``; ``Conv_1``/``Conv_1_bn`` -> ``conv_head``/``bn2``.
    Dense layers after the backbone -> ``classifier`` (see :func:`_head`).
    """
    source = Path(source)
    layers = read_keras_layers(source)
    _, outside = _backbone_split(layers, "Conv1", source)
    b = _Builder(model, layers, source)
    dropped = _check_normalization(b, outside, spec)
    b.conv("Conv1", "conv_stem")
    b.bn("bn_Conv1", "bn1")
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    b.depthwise("expanded_conv_depthwise", f"{blocks[0]}.conv_dw")
    b.bn("expanded_conv_depthwise_BN", f"{blocks[0]}.bn1")
    b.conv("expanded_conv_project", f"{blocks[0]}.conv_pw")
    b.bn("expanded_conv_project_BN", f"{blocks[0]}.bn2")
    for i, block in enumerate(blocks[1:], start=1):
        b.conv(f"block_{i}_expand", f"{block}.conv_pw")
        b.bn(f"block_{i}_expand_BN", f"{block}.bn1")
        b.depthwise(f"block_{i}_depthwise", f"{block}.conv_dw")
        b.bn(f"block_{i}_depthwise_BN", f"{block}.bn2")
        b.conv(f"block_{i}_project", f"{block}.conv_pwl")
        b.bn(f"block_{i}_project_BN", f"{block}.bn3")
    b.conv("Conv_1", "conv_head")
    b.bn("Conv_1_bn", "bn2")
    dropped |= _head(b, [x for x in outside if x.kind != "Normalization"])
    return b.finish(dropped)


_VGG16_BLOCKS = (2, 2, 3, 3, 3)


@register_converter("keras_vgg16")
def convert_vgg16(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """The 13 convs of ``keras.applications.VGG16`` (``block{b}_conv{c}``, as HED's ``.weights.h5`` names them on
    its ``vars`` groups) to the target's ``features.<i>`` convs in order (timm ``vgg16`` / ``medxfer:vgg16_plain``
    positions 0, 2, 5, 7, 10, ...).

    Keras's VGG16 weights, and HED's trained from them, expect BGR input (the "caffe" preprocessing of
    ``keras.applications.vgg16``): the first conv's input channels are reversed so the converted model takes RGB
    (the model config's ``data.mean`` is then the RGB order of the Caffe means). Other layers with weights (HED's
    side outputs ``dsn1..5`` and ``fuse``) have no place in the target and are dropped.
    """
    source = Path(source)
    layers = read_keras_layers(source)
    b = _Builder(model, layers, source)
    convs = [k[: -len(".weight")] for k, v in b.target.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4]
    names = [f"block{bk}_conv{c}" for bk, n in enumerate(_VGG16_BLOCKS, start=1) for c in range(1, n + 1)]
    if len(convs) != len(names):
        raise ConversionError(f"{source}: the target has {len(convs)} convs under features., VGG16 has {len(names)}: {convs}")
    for name, prefix in zip(names, convs):
        layer = b.layer(name)
        kernel = b.var(layer, "0" if "0" in layer.weights else "kernel")
        if name == "block1_conv1":  # BGR -> RGB
            kernel = kernel[:, :, ::-1, :]
        b.out[f"{prefix}.weight"] = _conv_weight(kernel)
        b.out[f"{prefix}.bias"] = _t(b.var(layer, "1" if "1" in layer.weights else "bias"))
    return b.finish(set(b.by_name) - set(names))
