"""TensorFlow.js models (layers and graph format), read without TensorFlow.js and mapped onto timm models.

A tfjs model is a model JSON (``modelTopology`` and ``weightsManifest``) plus binary weight shards. The npm
package nsfwjs ships both as browserify bundles: ``model.min.js`` exports the model JSON as a JavaScript
object literal (unquoted keys, ``!0``/``!1`` for true/false, ``.5`` numbers) and each
``group<i>-shard<j>of<n>.min.js`` exports one shard as a base64 string. :func:`read_tfjs` reads that layout,
or the ``model.json`` and binary shards that ``tensorflowjs_converter`` writes, and dequantises the weights as
tfjs does: ``value = q * scale + min`` in double precision, stored as float32 (``uint8``/``uint16``
quantisation), or float16 widened to float32.

The converters pair the source's convolutions, in network order, with the target's ``Conv2d`` modules in
registration order (timm registers them in the order they run), each followed by its ``BatchNorm2d``;
kernel shapes, strides, TensorFlow padding and BatchNorm epsilon must agree one by one. The Dense layers of
the source head go to the ``nn.Linear`` modules of ``model.get_classifier()``, in order; a target without a
classifier (``head: none``) drops them.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medxfer.models.convert import ConversionError, register_converter

__all__ = [
    "TfjsModel",
    "convert_graph_mobilenetv2",
    "convert_layers_inception_v3",
    "convert_layers_mobilenetv2",
    "graph_input_affine",
    "keras_layers",
    "parse_js_literal",
    "read_js_export",
    "read_tfjs",
]


# ---- the JavaScript bundles ----

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_WORDS = {"!0": True, "!1": False, "true": True, "false": False, "null": None, "void 0": None}
_PLAIN = {q: re.compile(f"[^{q}\\\\\n\r]*") for q in "\"'"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
# where a bundle hands its value to the module system: browserify's ``e.exports=``, CommonJS, ES modules
_EXPORT = re.compile(r"(?:\bexports\s*=|\bexport\s+default\s)\s*(?=[{\['\"\d.-])")
# what may follow the literal: the bundle's closing brackets and calls (``},{}]},{},[1])(1)});``), a source map
_TAIL = re.compile(r"[\s{}\[\](),;1]*(?://[#@] sourceMappingURL=\S*\s*)?")


def parse_js_literal(text: str, pos: int = 0) -> tuple[Any, int]:
    """The JavaScript literal (object, array, string, number, boolean, null) at ``text[pos:]``, and where it
    ends. Only what minifiers write for JSON data is accepted; anything else is an error naming the offset."""

    def fail(what: str, at: int) -> ConversionError:
        return ConversionError(f"JavaScript literal: {what} at offset {at}: {text[max(at - 30, 0):at + 30]!r}")

    def value(i: int) -> tuple[Any, int]:
        if i >= len(text):
            raise fail("unexpected end", i)
        c = text[i]
        if c == "{":
            out: dict[str, Any] = {}
            i += 1
            if text.startswith("}", i):
                return out, i + 1
            while True:
                if i < len(text) and text[i] in "\"'":
                    key, i = string(i)
                else:
                    m = _IDENT.match(text, i) or _NUMBER.match(text, i)
                    if m is None:
                        raise fail("expected a key", i)
                    key, i = m.group(), m.end()
                if not text.startswith(":", i):
                    raise fail("expected ':'", i)
                if key in out:
                    raise fail(f"duplicate key {key!r}", i)
                out[key], i = value(i + 1)
                if text.startswith(",", i):
                    i += 1
                elif text.startswith("}", i):
                    return out, i + 1
                else:
                    raise fail("expected ',' or '}'", i)
        if c == "[":
            items: list[Any] = []
            i += 1
            if text.startswith("]", i):
                return items, i + 1
            while True:
                item, i = value(i)
                items.append(item)
                if text.startswith(",", i):
                    i += 1
                elif text.startswith("]", i):
                    return items, i + 1
                else:
                    raise fail("expected ',' or ']'", i)
        if c in "\"'":
            return string(i)
        for word, v in _WORDS.items():
            if text.startswith(word, i) and not (word[-1].isalpha() and _IDENT.match(text, i + len(word))):
                return v, i + len(word)
        m = _NUMBER.match(text, i)
        if m is None or _IDENT.match(text, m.end()):
            raise fail("not a JSON-like value", i)
        token = m.group()
        return (float(token) if any(ch in token for ch in ".eE") else int(token)), m.end()

    def string(i: int) -> tuple[str, int]:
        quote, j, parts = text[i], i + 1, []
        while True:
            if j >= len(text) or text[j] in "\n\r":
                raise fail("unterminated string", i)
            run = _PLAIN[quote].match(text, j).end()  # base64 shards are megabytes without escapes
            if run > j:
                parts.append(text[j:run])
                j = run
                continue
            if text[j] == quote:
                return "".join(parts), j + 1
            e = text[j + 1 : j + 2]
            if e == "u" and text.startswith("{", j + 2):
                end = text.index("}", j + 3)
                parts.append(chr(int(text[j + 3 : end], 16)))
                j = end + 1
            elif e in ("u", "x"):
                n = 4 if e == "u" else 2
                digits = text[j + 2 : j + 2 + n]
                if not re.fullmatch(f"[0-9A-Fa-f]{{{n}}}", digits):
                    raise fail(f"bad \\{e} escape", j)
                parts.append(chr(int(digits, 16)))
                j += 2 + n
            elif e == "0" and text[j + 2 : j + 3].isdigit():
                raise fail("octal escape", j)
            else:
                parts.append(_ESCAPES.get(e, e))  # \" \' \\ \/ stand for themselves
                j += 2

    return value(pos)


def read_js_export(path: str | Path) -> Any:
    """The one JSON-like value a bundled JavaScript module exports (``module.exports = <literal>``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    starts = [m.end() for m in _EXPORT.finditer(text)]
    if len(starts) != 1:
        raise ConversionError(f"{path}: expected one exported literal (`exports=<value>`), found {len(starts)}")
    try:
        value, end = parse_js_literal(text, starts[0])
    except ConversionError as err:
        raise ConversionError(f"{path}: {err}") from None
    if not _TAIL.fullmatch(text, end):
        raise ConversionError(f"{path}: unexpected code after the exported value at offset {end}: {text[end:end + 60]!r}")
    return value


# ---- the model JSON and its weights ----

@dataclass(frozen=True)
class TfjsModel:
    """A tfjs model folder: its model JSON and its weights by manifest name (float32 after dequantisation)."""

    folder: Path
    json: dict[str, Any]
    weights: dict[str, np.ndarray]

    @property
    def format(self) -> str:
        """``layers-model`` or ``graph-model`` (old layers models do not say; they have a Keras ``model_config``)."""
        fmt = self.json.get("format")
        if fmt:
            return fmt
        return "layers-model" if "model_config" in (self.json.get("modelTopology") or {}) else "graph-model"


_ITEM_BYTES = {"float32": 4, "int32": 4, "bool": 1, "uint8": 1, "uint16": 2, "float16": 2}


def _read_shard(folder: Path, path: str) -> bytes:
    """A weight shard: the binary file the manifest names, or the ``.min.js`` bundle of its base64."""
    plain = folder / path
    if plain.is_file():
        return plain.read_bytes()
    stem = path[: -len(".bin")] if path.endswith(".bin") else path
    bundle = folder / f"{stem}.min.js"
    if not bundle.is_file():
        raise ConversionError(f"{folder}: weight shard {path!r} of the manifest is neither {plain.name} nor {bundle.name}")
    payload = read_js_export(bundle)
    if not isinstance(payload, str):
        raise ConversionError(f"{bundle}: exports a {type(payload).__name__}, expected a base64 string")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as err:
        raise ConversionError(f"{bundle}: not valid base64 ({err})") from None


def _decode_group(specs: list[dict[str, Any]], data: bytes, where: str) -> dict[str, np.ndarray]:
    """The weights of one manifest group from its concatenated shards, as tfjs's ``decodeWeights`` does."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        name, dtype, shape = spec["name"], spec["dtype"], tuple(int(d) for d in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        quant = spec.get("quantization")
        stored = quant["dtype"] if quant else dtype
        if stored not in _ITEM_BYTES or dtype not in ("float32", "int32", "bool"):
            raise ConversionError(f"{where}: weight {name}: dtype {dtype!r} stored as {stored!r} is not supported")
        size = count * _ITEM_BYTES[stored]
        if offset + size > len(data):
            raise ConversionError(f"{where}: weight {name} {shape} needs bytes {offset}..{offset + size}, "
                                  f"the shards hold {len(data)}")
        raw = np.frombuffer(data, dtype=np.dtype(stored if stored != "bool" else "u1").newbyteorder("<"),
                            count=count, offset=offset)
        offset += size
        if quant is None:
            values = raw.astype(np.bool_ if dtype == "bool" else dtype)
        elif stored == "float16":
            if dtype != "float32":
                raise ConversionError(f"{where}: weight {name}: float16 quantisation of a {dtype} tensor")
            values = raw.astype(np.float32)
        else:
            if "min" not in quant or "scale" not in quant:
                raise ConversionError(f"{where}: weight {name}: {stored} quantisation without min and scale: {quant}")
            # JavaScript computes q * scale + min in double precision and stores it in a Float32Array
            exact = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
            if dtype == "float32":
                values = exact.astype(np.float32)
            elif dtype == "int32":
                values = np.floor(exact + 0.5).astype(np.int32)  # Math.round
            else:
                raise ConversionError(f"{where}: weight {name}: {stored} quantisation of a {dtype} tensor")
        if name in out:
            raise ConversionError(f"{where}: weight {name} appears twice in the manifest")
        out[name] = values.reshape(shape)
    if offset != len(data):
        raise ConversionError(f"{where}: the manifest accounts for {offset} bytes, the shards hold {len(data)}")
    return out


def read_tfjs(folder: str | Path) -> TfjsModel:
    """Read a tfjs model folder (``model.json`` or ``model.min.js``, and its shards); weights dequantised."""
    folder = Path(folder)
    if (folder / "model.json").is_file():
        model_json = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    elif (folder / "model.min.js").is_file():
        model_json = read_js_export(folder / "model.min.js")
    else:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "not a folder"
        raise ConversionError(f"{folder}: no model.json or model.min.js (found: {found})")
    if not isinstance(model_json, dict) or "modelTopology" not in model_json or "weightsManifest" not in model_json:
        raise ConversionError(f"{folder}: the model JSON has no modelTopology/weightsManifest")
    weights: dict[str, np.ndarray] = {}
    for i, group in enumerate(model_json["weightsManifest"]):
        data = b"".join(_read_shard(folder, p) for p in group["paths"])
        decoded = _decode_group(group["weights"], data, f"{folder} (weight group {i}: {group['paths']})")
        twice = sorted(set(decoded) & set(weights))
        if twice:
            raise ConversionError(f"{folder}: weights {twice[:5]} appear in two weight groups")
        weights.update(decoded)
    return TfjsModel(folder, model_json, weights)


def keras_layers(topology: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer list of a tfjs layers model's Keras ``model_config`` (functional or Sequential)."""
    config = topology.get("model_config", topology).get("config")
    layers = config if isinstance(config, list) else (config or {}).get("layers")
    if not isinstance(layers, list):
        raise ConversionError("the layers model's modelTopology has no model_config.config.layers")
    return layers


# ---- shared mapping onto the target ----

@dataclass
class _ConvBN:
    """A source convolution with the BatchNorm after it, in torch layouts."""

    name: str
    kernel: np.ndarray  # [out, in/groups, kh, kw]
    stride: tuple[int, int]
    padding: str  # "same" | "valid" | anything else (matches nothing)
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray | None  # None: BatchNorm folded into the conv; the target's BN becomes an exact identity
    eps: float | None


def _torch_kernel(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """TensorFlow HWIO (or depthwise [h, w, in, multiplier]) -> torch [out, in/groups, h, w]."""
    if depthwise:
        kh, kw, cin, mult = kernel.shape
        return kernel.reshape(kh, kw, cin * mult, 1).transpose(2, 3, 0, 1)  # output channel c * mult + m
    return kernel.transpose(3, 2, 0, 1)


def _target_padding(conv: nn.Conv2d) -> str:
    if type(conv).__name__ == "Conv2dSame":  # timm's dynamic TensorFlow 'SAME'
        return "same"
    kh, kw = conv.kernel_size
    if conv.padding == (0, 0) and not isinstance(conv.padding, str):
        return "valid" if (kh, kw) != (1, 1) else "same"  # a 1x1 kernel pads nothing either way
    if conv.padding == "same" or (conv.stride == (1, 1) and conv.padding == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 and kw % 2):
        return "same"
    return f"symmetric {conv.padding} at stride {conv.stride}"


def _target_conv_bn(model: nn.Module) -> list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """The target's convolutions, each with the BatchNorm registered after it, in registration order."""
    pairs, pending = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if pending is not None:
                raise ConversionError(f"target {type(model).__name__}: conv {pending[0]} has no BatchNorm after it")
            pending = (name, module)
        elif isinstance(module, nn.BatchNorm2d):
            if pending is None:
                raise ConversionError(f"target {type(model).__name__}: BatchNorm {name} follows no conv")
            pairs.append((*pending, name, module))
            pending = None
    if pending is not None:
        raise ConversionError(f"target {type(model).__name__}: conv {pending[0]} has no BatchNorm after it")
    return pairs


def _show(names: list[str]) -> str:
    return f"{len(names)} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"


def _map_conv_bn(units: list[_ConvBN], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    targets = _target_conv_bn(model)
    if len(units) != len(targets):
        n = min(len(units), len(targets))
        raise ConversionError(
            f"{where}: {len(units)} source convs, {type(model).__name__} has {len(targets)}; unmatched source "
            f"convs {_show([u.name for u in units[n:]])}, unmatched target convs {_show([t[0] for t in targets[n:]])}"
        )
    state: dict[str, torch.Tensor] = {}
    problems = []
    for unit, (cname, conv, bname, bn) in zip(units, targets):
        if unit.kernel.shape != tuple(conv.weight.shape):
            problems.append(f"{unit.name} kernel {unit.kernel.shape} vs {cname}.weight {tuple(conv.weight.shape)}")
            continue
        if unit.stride != tuple(conv.stride):
            problems.append(f"{unit.name} stride {unit.stride} vs {cname} stride {tuple(conv.stride)}")
        pad = _target_padding(conv)
        if unit.padding != pad:
            problems.append(f"{unit.name} padding {unit.padding!r} vs {cname} {pad!r} (timm: arch_kwargs pad_type)")
        if unit.eps is not None and abs(unit.eps - bn.eps) > 1e-12:
            problems.append(f"{unit.name} BatchNorm eps {unit.eps} vs {bname}.eps {bn.eps} (timm: arch_kwargs bn_eps)")
        if conv.bias is not None:
            problems.append(f"{cname} has a bias; {unit.name} puts its shift in the BatchNorm")
        state[f"{cname}.weight"] = torch.from_numpy(np.ascontiguousarray(unit.kernel, dtype=np.float32))
        var = unit.var if unit.var is not None else np.full(unit.mean.shape, 1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
        for key, arr in (("weight", unit.gamma), ("bias", unit.beta), ("running_mean", unit.mean), ("running_var", var)):
            if arr.shape != (bn.num_features,):
                problems.append(f"{unit.name} BatchNorm {key} {arr.shape} vs {bname} ({bn.num_features},)")
            state[f"{bname}.{key}"] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if problems:
        raise ConversionError(f"{where} does not fit {type(model).__name__}: " + "; ".join(problems[:10])
                              + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
    return state


def _map_head(dense: list[tuple[str, np.ndarray, np.ndarray]], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """Dense layers ([out, in] weight, bias) onto the classifier's Linear modules; none when it has no Linear."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    inside = {id(m) for m in classifier.modules()} if isinstance(classifier, nn.Module) else set()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in inside]
    if not linears:
        return {}  # head: none -- the source head is not part of the model
    shapes = [f"{n} {tuple(w.shape)}" for n, w, _ in dense]
    targets = [f"{n}.weight {tuple(m.weight.shape)}" for n, m in linears]
    if len(dense) != len(linears) or any(w.shape != tuple(m.weight.shape) or m.bias is None
                                          for (_, w, _), (_, m) in zip(dense, linears)):
        raise ConversionError(f"{where}: the source head (Dense {shapes}) does not fit the classifier of "
                              f"{type(model).__name__} ({targets}); use head: none to drop it")
    state = {}
    for (_, w, b), (name, _) in zip(dense, linears):
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    return state


def _complete(state: dict[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """Add the target's ``num_batches_tracked`` counters; every other target key must have been mapped."""
    target = model.state_dict()
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing, unexpected = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    if missing or unexpected:
        raise ConversionError(f"{where}: target keys not filled {_show(missing)}; keys {type(model).__name__} "
                              f"lacks {_show(unexpected)}")
    return {k: state[k] for k in target}


def _check_all_used(weights: dict[str, np.ndarray], used: set[str], where: str) -> None:
    unused = [n for n in weights if n not in used]
    if unused:
        raise ConversionError(f"{where}: source weights the mapping does not place: {_show(unused)}")


# ---- layers models (Keras) ----

def _keras_units(tfjs: TfjsModel, layers: list[dict[str, Any]], used: set[str]) -> list[_ConvBN]:
    """Every Conv2D/DepthwiseConv2D with the BatchNormalization that consumes it, in ``layers`` order."""
    by_name = {layer["config"]["name"]: layer for layer in layers}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        for src in _inbound(layer):
            consumers.setdefault(src, []).append(layer)
    where = str(tfjs.folder)

    def weight(name: str) -> np.ndarray:
        if name not in tfjs.weights:
            raise ConversionError(f"{where}: the model JSON needs weight {name!r}, the manifest lacks it")
        used.add(name)
        return tfjs.weights[name]

    units = []
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        if kind not in ("Conv2D", "DepthwiseConv2D"):
            continue
        name = cfg["name"]
        bns = [c for c in consumers.get(name, []) if c["class_name"] == "BatchNormalization"]
        if len(bns) != 1 or len(consumers[name]) != 1 or cfg.get("use_bias") or cfg.get("activation", "linear") != "linear":
            raise ConversionError(f"{where}: {kind} {name} is not a bias-free, linear conv feeding one BatchNormalization "
                                  f"(consumers: {[c['config']['name'] for c in consumers.get(name, [])]})")
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("data_format", "channels_last") != "channels_last":
            raise ConversionError(f"{where}: {kind} {name}: dilation {cfg.get('dilation_rate')} / "
                                  f"{cfg.get('data_format')} not supported")
        bcfg = bns[0]["config"]
        bn = bcfg["name"]
        depthwise = kind == "DepthwiseConv2D"
        kernel = _torch_kernel(weight(f"{name}/{'depthwise_kernel' if depthwise else 'kernel'}"), depthwise)
        mean = weight(f"{bn}/moving_mean")
        units.append(_ConvBN(
            name=name, kernel=kernel, stride=tuple(int(s) for s in cfg["strides"]),
            padding=_keras_padding(cfg, by_name, kernel.shape[2:]),
            gamma=weight(f"{bn}/gamma") if bcfg.get("scale", True) else np.ones_like(mean),  # scale=False: gamma 1
            beta=weight(f"{bn}/beta") if bcfg.get("center", True) else np.zeros_like(mean),
            mean=mean, var=weight(f"{bn}/moving_variance"), eps=float(bcfg["epsilon"]),
        ))
    return units


def _inbound(layer: dict[str, Any]) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ConversionError(f"layer {layer['config']['name']} is called {len(nodes)} times (shared layers are not supported)")
    return [entry[0] for entry in nodes[0]] if nodes else []


def _keras_padding(cfg: dict[str, Any], by_name: dict[str, dict[str, Any]], kernel: tuple[int, int]) -> str:
    """'same' or 'valid' as TensorFlow computes it; ZeroPadding2D + 'valid' that pads like 'SAME' on inputs a
    multiple of the stride (Keras MobileNetV2's ``correct_pad``: (0, 1) for a 3x3 kernel at stride 2) is 'same'."""
    if cfg["padding"] == "same" or tuple(kernel) == (1, 1):
        return "same"
    src = _inbound(by_name[cfg["name"]])
    if len(src) == 1 and by_name[src[0]]["class_name"] == "ZeroPadding2D":
        pads = by_name[src[0]]["config"]["padding"]
        pads = [[p, p] if isinstance(p, int) else list(p) for p in ([pads, pads] if isinstance(pads, int) else pads)]
        same = [[(k - s) // 2, (k - s) - (k - s) // 2] for k, s in zip(kernel, cfg["strides"])]
        return "same" if pads == same else f"zero-padding {pads} then valid"
    return "valid"


def _keras_dense(tfjs: TfjsModel, layers: list[dict[str, Any]], used: set[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    dense = []
    for layer in layers:
        if layer["class_name"] == "Dense":
            name = layer["config"]["name"]
            w, b = f"{name}/kernel", f"{name}/bias"
            if w not in tfjs.weights or b not in tfjs.weights:
                raise ConversionError(f"{tfjs.folder}: Dense {name} lacks {w} or {b} in the manifest")
            used.update((w, b))
            dense.append((name, tfjs.weights[w].T, tfjs.weights[b]))
    return dense


def _convert_layers(source: Path, model: nn.Module, order: str) -> dict[str, torch.Tensor]:
    tfjs = read_tfjs(source)
    if tfjs.format != "layers-model":
        raise ConversionError(f"{source}: a tfjs {tfjs.format}, expected a layers model")
    layers = keras_layers(tfjs.json["modelTopology"])
    used: set[str] = set()
    units = _keras_units(tfjs, layers, used)
    if order == "creation":
        # Keras lists a functional model's layers by depth; its automatic names count in creation order
        def counter(unit: _ConvBN) -> int:
            m = re.fullmatch(r"conv2d_(\d+)", unit.name)
            if m is None:
                raise ConversionError(f"{source}: conv {unit.name!r} has no automatic Keras name conv2d_<n>; "
                                      "its creation order is unknown")
            return int(m.group(1))

        units.sort(key=counter)
    state = _map_conv_bn(units, model, str(source))
    state.update(_map_head(_keras_dense(tfjs, layers, used), model, str(source)))
    _check_all_used(tfjs.weights, used, str(source))
    return _complete(state, model, str(source))


@register_converter("tfjs_layers_mobilenetv2")
def convert_layers_mobilenetv2(source: Path, model: nn.Module, spec=None) -> dict[str, torch.Tensor]:
    """Keras MobileNetV2 as a tfjs layers model -> timm ``mobilenetv2_*`` (``bn_eps=1e-3, pad_type='same'``).

    Mapping: the Conv2D/DepthwiseConv2D layers in the model JSON's order (``Conv1``, ``expanded_conv_*``,
    ``block_<i>_{expand,depthwise,project}``, ``Conv_1``) are timm's convs in registration order
    (``conv_stem``, ``blocks.*.*.conv_{pw,dw,pwl}``, ``conv_head``); each one's BatchNormalization
    (gamma, beta, moving mean/variance) goes to the BatchNorm after it. Kernels HWIO -> OIHW, depthwise
    [h, w, c, 1] -> [c, 1, h, w]. ``ZeroPadding2D((0, 1), (0, 1))`` + 'valid' stride-2 convs are TF 'SAME'
    (timm's ``Conv2dSame``). Dense layers of the source head go to the classifier (dropped for ``head: none``).
    """
    return _convert_layers(Path(source), model, order="layers")


@register_converter("tfjs_layers_inception_v3")
def convert_layers_inception_v3(source: Path, model: nn.Module, spec=None) -> dict[str, torch.Tensor]:
    """Keras InceptionV3 as a tfjs layers model -> timm ``inception_v3``.

    Mapping: the 94 ``conv2d_<n>`` layers in creation order (the number Keras appends) are timm's 94 convs in
    registration order (``Conv2d_1a_3x3.conv`` ... ``Mixed_7c.branch_pool.conv``: Keras applications and
    timm build the branches in the same order); ``batch_normalization_<n>`` after each has ``scale=False``, so
    gamma is 1. Kernels HWIO -> OIHW. Dense layers of the source head go to the classifier (dropped for
    ``head: none``). Not representable in a state dict: Keras averages the 3x3 'same' branch pools over the
    valid pixels only, timm's ``avg_pool2d(padding=1)`` counts the zero padding (plain timm: pooled features
    up to 0.3 apart on photos), so the target is ``medxfer:inception_v3_tf``, which pools as Keras does.
    """
    return _convert_layers(Path(source), model, order="creation")


# ---- graph models (frozen TensorFlow graph, BatchNorm folded) ----

def _attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
    """A node attribute as a Python value: lists of ints, strings (base64 in the JSON) decoded."""
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "list" in value:
        lst = value["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        return [base64.b64decode(v).decode() for v in lst.get("s", [])]
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    for kind in ("i", "f", "b"):
        if kind in value:
            return value[kind]
    return value


_CONV_OPS = {"_FusedConv2D": False, "FusedDepthwiseConv2dNative": True}
_AFFINE_OPS = {"Mul", "Sub", "Add", "AddV2", "RealDiv"}


def graph_input_affine(nodes: list[dict[str, Any]], weights: dict[str, np.ndarray], used: set[str]) -> tuple[float, float]:
    """``(a, b)``: the graph computes ``a * input + b`` (scalar Mul/Sub/Add/RealDiv ops) before its first conv."""
    producer = {n["name"]: n for n in nodes}
    first = next((n for n in nodes if n["op"] in _CONV_OPS), None)
    if first is None:
        raise ConversionError("the graph has no fused convolution")
    chain, name = [], _ref(first["input"][0])
    while producer[name]["op"] != "Placeholder":
        node = producer[name]
        refs = [_ref(i) for i in node.get("input", [])]
        consts = [r for r in refs if r in weights]
        if node["op"] not in _AFFINE_OPS or len(refs) != 2 or len(consts) != 1 or weights[consts[0]].size != 1:
            raise ConversionError(f"graph op {node['name']} ({node['op']}) between the input and the first conv is not "
                                  "a Mul/Sub/Add/RealDiv with a scalar constant")
        chain.append((node, refs[0] == consts[0], float(weights[consts[0]].reshape(()))))
        used.add(consts[0])
        name = next(r for r in refs if r not in weights)
    a, b = 1.0, 0.0
    for node, const_first, c in reversed(chain):  # from the input forwards
        op = node["op"]
        if op == "Mul":
            a, b = a * c, b * c
        elif op in ("Add", "AddV2"):
            b = b + c
        elif op == "Sub":
            a, b = (-a, c - b) if const_first else (a, b - c)
        elif const_first:
            raise ConversionError(f"graph op {node['name']}: constant / input is not affine")
        else:
            a, b = a / c, b / c
    return a, b


def _ref(name: str) -> str:
    """A node input reference without its output index (``node:0`` -> ``node``)."""
    return name.split(":")[0]


@register_converter("tfjs_graph_mobilenetv2")
def convert_graph_mobilenetv2(source: Path, model: nn.Module, spec=None) -> dict[str, torch.Tensor]:
    """TF-Hub MobileNetV2 as a tfjs graph model (BatchNorm folded into each conv) -> timm ``mobilenetv2_*``
    (``pad_type='same'``).

    Mapping: the ``_FusedConv2D``/``FusedDepthwiseConv2dNative`` nodes in graph order (each conv + BiasAdd
    [+ Relu6]) are timm's convs in registration order; the folded bias goes to the BatchNorm after each conv,
    which becomes an exact identity plus shift (weight 1, running mean 0, running var 1 - eps). The
    ``_FusedMatMul`` head goes to the classifier (dropped for ``head: none``). The scalar ops between the
    graph input and the first conv (TF-Hub's ``hub_input``: x * 2 - 1) must equal the config's
    normalisation ``(x - mean) / std`` of an x in [0, 1], the input nsfwjs feeds (pixels / 255).
    """
    source = Path(source)
    where = str(source)
    tfjs = read_tfjs(source)
    if tfjs.format != "graph-model":
        raise ConversionError(f"{source}: a tfjs {tfjs.format}, expected a graph model")
    nodes = tfjs.json["modelTopology"].get("node") or []
    used: set[str] = set()

    def const(ref: str, node: dict[str, Any]) -> np.ndarray:
        if _ref(ref) not in tfjs.weights:
            raise ConversionError(f"{where}: node {node['name']} reads {ref}, which the weights manifest lacks")
        used.add(_ref(ref))
        return tfjs.weights[_ref(ref)]

    units, dense = [], []
    for node in nodes:
        op = node["op"]
        if op in ("Conv2D", "DepthwiseConv2dNative", "MatMul", "FusedBatchNorm", "FusedBatchNormV3", "BiasAdd"):
            raise ConversionError(f"{where}: unfused {op} node {node['name']}; this converter reads folded graphs only")
        if op in _CONV_OPS:
            fused = _attr(node, "fused_ops", [])
            if fused[:1] != ["BiasAdd"] or len(node["input"]) != 3 or _attr(node, "data_format", "NHWC") != "NHWC":
                raise ConversionError(f"{where}: {op} node {node['name']} is not an NHWC conv + BiasAdd (fused {fused})")
            if set(_attr(node, "dilations", [1, 1, 1, 1])) != {1}:
                raise ConversionError(f"{where}: {op} node {node['name']} is dilated")
            kernel = _torch_kernel(const(node["input"][1], node), _CONV_OPS[op])
            bias = const(node["input"][2], node)
            strides = _attr(node, "strides", [1, 1, 1, 1])
            padding = _attr(node, "padding", "VALID").lower()
            units.append(_ConvBN(
                name=node["name"], kernel=kernel, stride=(strides[1], strides[2]),
                padding="same" if kernel.shape[2:] == (1, 1) else padding,
                gamma=np.ones_like(bias), beta=bias, mean=np.zeros_like(bias), var=None, eps=None,
            ))
        elif op == "_FusedMatMul":
            if _attr(node, "fused_ops", []) != ["BiasAdd"] or _attr(node, "transpose_a", False):
                raise ConversionError(f"{where}: _FusedMatMul node {node['name']} is not MatMul + BiasAdd")
            w = const(node["input"][1], node)
            dense.append((node["name"], w if _attr(node, "transpose_b", False) else w.T, const(node["input"][2], node)))
    a, b = graph_input_affine(nodes, tfjs.weights, used)
    if spec is not None:
        from medxfer.models.zoo import model_data_config

        config = model_data_config(model, spec)
        want = [(1.0 / s, -m / s) for m, s in zip(config["mean"], config["std"])]
        if any(abs(wa - a) > 1e-6 or abs(wb - b) > 1e-6 for wa, wb in want):
            raise ConversionError(f"{where}: the graph feeds its first conv {a:g} * x + {b:g}, the model config's "
                                  f"normalisation gives (x - {config['mean']}) / {config['std']}; set data.mean = "
                                  f"{-b / a:g} and data.std = {1 / a:g}")
    state = _map_conv_bn(units, model, where)
    state.update(_map_head(dense, model, where))
    _check_all_used(tfjs.weights, used, where)
    return _complete(state, model, where)
