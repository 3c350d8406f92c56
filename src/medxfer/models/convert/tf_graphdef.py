"""Frozen TensorFlow GraphDef (``.pb``) files, read without TensorFlow.

A frozen graph stores every weight as a ``Const`` node whose ``value`` attribute is a ``TensorProto``. The
protobuf classes compiled into the ``tensorboard`` wheel parse the file; :func:`decode_tensor` turns a
``TensorProto`` into a numpy array, so nothing here imports TensorFlow.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medxfer.models.convert import ConversionError, register_converter

__all__ = ["convert_mobilenetv1", "decode_tensor", "graphdef_constants", "read_graphdef"]

# TensorFlow DataType enum values (tensorflow/core/framework/types.proto) -> numpy dtype
_NUMPY_DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
    10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}
# where a TensorProto keeps its values when ``tensor_content`` is empty; half_val holds float16 bit patterns
_VALUE_FIELDS = {
    1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val", 9: "int64_val",
    10: "bool_val", 17: "int_val", 19: "half_val", 22: "uint32_val", 23: "uint64_val",
}
_DT_STRING = 7


def read_graphdef(path: str | Path):
    """The ``GraphDef`` message in a binary ``.pb`` file."""
    try:
        from tensorboard.compat.proto import graph_pb2
    except ImportError as err:
        raise ConversionError(f"reading the TensorFlow graph {path} needs the tensorboard package ({err})") from None
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ConversionError(f"{path} is not a binary TensorFlow GraphDef: {type(err).__name__}: {err}") from None
    return graph


def decode_tensor(proto, name: str = "?") -> np.ndarray:
    """A ``TensorProto`` as a numpy array (strings as an object array of bytes).

    Values sit either in ``tensor_content`` (raw little-endian bytes) or in the typed repeated field; a typed
    field shorter than the shape is padded with its last value, as TensorFlow does for splat constants.
    """
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == _DT_STRING:
        values = list(proto.string_val)
        return np.array(values + values[-1:] * (count - len(values)) if values else [b""] * count, dtype=object).reshape(shape)
    if proto.dtype not in _NUMPY_DTYPES:
        raise ConversionError(f"constant {name}: TensorFlow dtype {proto.dtype} is not supported")
    dtype = np.dtype(_NUMPY_DTYPES[proto.dtype]).newbyteorder("<")
    if proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=dtype)
        if array.size != count:
            raise ConversionError(f"constant {name}: {array.size} values in tensor_content for shape {shape}")
        return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    values = list(getattr(proto, _VALUE_FIELDS[proto.dtype]))
    if proto.dtype == 19:
        values = np.array(values, dtype=np.uint16).view(np.float16)
    values = np.asarray(values, dtype=_NUMPY_DTYPES[proto.dtype])
    if values.size == 0:
        return np.zeros(shape, dtype=_NUMPY_DTYPES[proto.dtype])
    if values.size > count:
        raise ConversionError(f"constant {name}: {values.size} values for shape {shape}")
    padded = np.concatenate([values, np.repeat(values[-1:], count - values.size)])
    return padded.reshape(shape)


def graphdef_constants(path: str | Path) -> dict[str, np.ndarray]:
    """Every ``Const`` node of the frozen graph in ``path``: {node name: numpy array}."""
    return {node.name: decode_tensor(node.attr["value"].tensor, node.name)
            for node in read_graphdef(path).node if node.op == "Const"}


# TF-slim MobileNetV1 variable names, scope "MobilenetV1/" (possibly under an outer scope)
_SLIM = re.compile(r"^(?:.*/)?MobilenetV1/(Conv2d_\d+(?:_depthwise|_pointwise)?|Logits/Conv2d_1c_1x1)/"
                   r"(weights|depthwise_weights|biases|BatchNorm/(?:gamma|beta|moving_mean|moving_variance))$")
_SCOPE = re.compile(r"^(?:.*/)?MobilenetV1/")
_BN_EPS = re.compile(r"/BatchNorm/batchnorm/add/y$")
_BN_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _slim_to_timm(model: nn.Module) -> dict[str, str]:
    """{slim layer: timm module prefix} for timm's MobileNetV1: the stem, then the depthwise-separable blocks in
    order (Conv2d_i = the i-th block, whatever the stage layout), then the classifier."""
    target = model.state_dict()
    blocks = [k[: -len(".conv_dw.weight")] for k in target if re.fullmatch(r"blocks\.\d+\.\d+\.conv_dw\.weight", k)]
    layers = {"Conv2d_0": ("conv_stem", "bn1")}
    for i, block in enumerate(blocks, start=1):
        layers[f"Conv2d_{i}_depthwise"] = (f"{block}.conv_dw", f"{block}.bn1")
        layers[f"Conv2d_{i}_pointwise"] = (f"{block}.conv_pw", f"{block}.bn2")
    return layers


def _check_graph_semantics(consts: dict[str, np.ndarray], model: nn.Module, spec, source: Path) -> None:
    """The graph's BN epsilon must equal the target's, and its 'SAME' padding needs timm's ``pad_type='same'``:
    both change outputs silently (symmetric padding shifts every stride-2 layer by a pixel)."""
    eps = sorted({float(v) for k, v in consts.items() if _BN_EPS.search(k) and v.size == 1})
    bn_eps = sorted({float(m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)})
    if eps and (len(bn_eps) != 1 or not all(np.isclose(e, bn_eps[0], rtol=1e-4, atol=0) for e in eps)):
        raise ConversionError(f"{source}: the graph's BatchNorm epsilon is {eps}, the target {spec.arch} has {bn_eps}; "
                              f"set model.arch_kwargs.bn_eps={eps[0]:g}")
    pad_type = (spec.arch_kwargs or {}).get("pad_type")
    if pad_type != "same":
        raise ConversionError(f"{source}: TF-slim MobileNetV1 convolutions use TensorFlow 'SAME' padding; the target "
                              f"needs model.arch_kwargs.pad_type=same (it has {pad_type!r})")


@register_converter("tf_graphdef_mobilenetv1")
def convert_mobilenetv1(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """TF-slim MobileNetV1 frozen graph -> timm ``mobilenetv1_*`` (built with ``bn_eps=1e-3, pad_type='same'``).

    Mapping (slim scope ``MobilenetV1/``, timm keys on the right):

    - ``Conv2d_0/weights`` (H, W, I, O) -> ``conv_stem.weight`` (O, I, H, W); ``Conv2d_0/BatchNorm/*`` -> ``bn1``;
    - ``Conv2d_{i}_depthwise/depthwise_weights`` (H, W, C, 1) -> ``<block i>.conv_dw.weight`` (C, 1, H, W),
      its BatchNorm -> ``<block i>.bn1``; ``Conv2d_{i}_pointwise/weights`` -> ``<block i>.conv_pw.weight``, its
      BatchNorm -> ``<block i>.bn2``, block i being timm's i-th ``blocks.s.j`` in order;
    - BatchNorm ``gamma, beta, moving_mean, moving_variance`` -> ``weight, bias, running_mean, running_var``;
    - ``Logits/Conv2d_1c_1x1/{weights, biases}`` (1, 1, 1024, 1001) -> ``classifier`` (Linear 1000 x 1024), dropping
      output 0 (slim's background class) so that the rest is ImageNet-1k in the standard order. A target without
      a classifier (``head: none``) leaves the logits unused; a 1001-output target keeps all of them.

    Constants outside the ``MobilenetV1/`` scope are ignored: the nudity package's retrained 2-class head
    (``final_training_ops/*``, fed by the 1001 ImageNet probabilities) is not part of the backbone.
    The graph's BatchNorm epsilon (``.../batchnorm/add/y``) is checked against the target's.
    """
    source = Path(source)
    consts = graphdef_constants(source)
    _check_graph_semantics(consts, model, spec, source)
    target = model.state_dict()
    layers = _slim_to_timm(model)

    found: dict[tuple[str, str], str] = {}
    for name in consts:
        match = _SLIM.match(name)
        if match:
            key = (match.group(1), match.group(2))
            if key in found:
                raise ConversionError(f"{source}: two constants for slim variable {key[0]}/{key[1]}: {found[key]} and {name}")
            found[key] = name
    weight_like = {n for n, v in consts.items() if _SCOPE.match(n) and v.ndim >= 1 and v.dtype.kind == "f"}

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []

    def take(layer: str, leaf: str) -> np.ndarray | None:
        name = found.get((layer, leaf))
        if name is None:
            return None
        used.add(name)
        return consts[name].astype(np.float32)

    def put(key: str, value: np.ndarray, what: str) -> None:
        if key not in target:
            problems.append(f"{what} -> {key} (no such key)")
        elif tuple(value.shape) != tuple(target[key].shape):
            problems.append(f"{what} {tuple(value.shape)} -> {key} {tuple(target[key].shape)}")
        else:
            state[key] = torch.from_numpy(np.ascontiguousarray(value))

    for layer, (conv, bn) in layers.items():
        kernel = take(layer, "depthwise_weights" if layer.endswith("_depthwise") else "weights")
        if kernel is not None:
            # HWIO -> OIHW; a depthwise kernel (H, W, C, 1) becomes (C, 1, H, W) by the same permutation + swap
            kernel = kernel.transpose(3, 2, 0, 1)
            if layer.endswith("_depthwise"):
                kernel = kernel.transpose(1, 0, 2, 3)
            put(f"{conv}.weight", kernel, f"{layer} kernel")
        for leaf, timm_leaf in _BN_LEAVES.items():
            value = take(layer, f"BatchNorm/{leaf}")
            if value is not None:
                put(f"{bn}.{timm_leaf}", value, f"{layer}/BatchNorm/{leaf}")
        if f"{bn}.num_batches_tracked" in target:
            state[f"{bn}.num_batches_tracked"] = torch.zeros_like(target[f"{bn}.num_batches_tracked"])

    # taken (so counted as used) even for a headless target, which drops them on purpose
    logits_w, logits_b = take("Logits/Conv2d_1c_1x1", "weights"), take("Logits/Conv2d_1c_1x1", "biases")
    if "classifier.weight" in target and logits_w is not None and logits_b is not None:
        weight, bias = logits_w.reshape(-1, logits_w.shape[-1]).T, logits_b  # (1, 1, I, O) -> (O, I)
        n_out = target["classifier.weight"].shape[0]
        if weight.shape[0] == n_out + 1:
            weight, bias = weight[1:], bias[1:]  # slim's output 0 is "background"
        if target["classifier.weight"].ndim == 4:  # a 1x1-conv classifier
            weight = weight[:, :, None, None]
        put("classifier.weight", weight, "Logits/Conv2d_1c_1x1/weights")
        put("classifier.bias", bias, "Logits/Conv2d_1c_1x1/biases")

    missing = [k for k in target if k not in state]
    unused = sorted(weight_like - used)
    if problems or missing or unused:
        def show(items: list[str]) -> str:
            return f"{len(items)} [{', '.join(items[:10])}{', ...' if len(items) > 10 else ''}]"
        raise ConversionError(
            f"{source} does not fit {spec.arch} as a TF-slim MobileNetV1: target keys not filled {show(missing)}; "
            f"graph constants not used {show(unused)}; mismatches {show(problems)}"
        )
    return state
