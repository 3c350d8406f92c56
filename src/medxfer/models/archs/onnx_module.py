"""Architectures defined by an ONNX graph: the graph's convolutional body, run by onnx2torch, behind timm's
classifier interface.

The graph is cut where its global pooling begins; the wrapper pools adaptively itself (so any input size
works, not only the size the graph's fixed-kernel pooling was exported for) and owns an ``nn.Linear``
classifier that fine-tuning can replace. The graph's own input convention (channel order, layout) is a fixed
transform inside the wrapper; the scale and mean are left to the model config's ``data`` (mean/std), so the
wrapper takes the usual NCHW RGB tensor.

``medxfer:onnx_resnet_1by2`` is open_nsfw's ResNet-50 at half width (Caffe-style: stride 2 on the first 1x1
conv of a stage), exported by tf2onnx with BN folded into the convs; the graph takes NHWC BGR 0-255 minus
the Caffe means (104, 117, 123).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medxfer.models.archs import register_arch

__all__ = ["OnnxBackbone", "build_onnx_resnet_1by2", "cut_at_pooling", "graph_body", "graph_head"]

# after the config's mean/std, x = 255 * rgb - (123, 117, 104); the graph wants the same in BGR order
_CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)
_POOLS = ("GlobalAveragePool", "AveragePool")
_FLATTENS = ("Reshape", "Flatten", "Squeeze")


def _load(source):
    import onnx

    if source is None:
        raise ValueError("this architecture is defined by its ONNX file: build it with source=<path to the .onnx>")
    if isinstance(source, onnx.ModelProto):
        return source
    if not Path(source).is_file():
        raise FileNotFoundError(f"ONNX file {source} does not exist")
    return onnx.load(str(source))


def _pool_node(model):
    pools = [n for n in model.graph.node if n.op_type in _POOLS]
    if len(pools) != 1:
        raise ValueError(f"expected one global pooling node ({'/'.join(_POOLS)}) in the graph, found {len(pools)}")
    return pools[0]


def cut_at_pooling(model):
    """A copy of the ONNX model whose output is the input of its global pooling (the last feature map)."""
    import onnx
    from onnx import TensorProto, helper

    output = _pool_node(model).input[0]
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    needed, keep, stack = set(), set(), [output]
    while stack:
        tensor = stack.pop()
        if tensor in needed:
            continue
        needed.add(tensor)
        if tensor in producer:
            node = producer[tensor]
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:]
    cut.graph.node.extend(n for n in graph.node if id(n) in keep)
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(i for i in graph.initializer if i.name in needed)
    del cut.graph.output[:]
    cut.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    del cut.graph.value_info[:]  # shapes inferred for the old output size would be wrong for others
    return cut


def graph_body(source) -> nn.Module:
    """onnx2torch's module for the graph in ``source`` cut at its global pooling, with the graph's weights."""
    from onnx2torch import convert

    return convert(cut_at_pooling(_load(source)))


def graph_head(source):
    """The graph's classifier after the pooling: ``((weight name, W (in, out)), (bias name, b))``, or None.

    Followed from the pooling through reshapes to one ``MatMul`` with an initialiser weight and the ``Add``
    of an initialiser bias.
    """
    from onnx import numpy_helper

    model = _load(source)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensor = _pool_node(model).output[0]
    for _ in range(4):
        nxt = consumers.get(tensor, [])
        if len(nxt) != 1 or nxt[0].op_type not in _FLATTENS:
            break
        tensor = nxt[0].output[0]
    matmul = consumers.get(tensor, [])
    if len(matmul) != 1 or matmul[0].op_type != "MatMul" or matmul[0].input[1] not in inits:
        return None
    adds = consumers.get(matmul[0].output[0], [])
    if len(adds) != 1 or adds[0].op_type != "Add":
        return None
    bias_name = next((i for i in adds[0].input if i in inits), None)
    if bias_name is None:
        return None
    w_name = matmul[0].input[1]
    return (w_name, numpy_helper.to_array(inits[w_name])), (bias_name, numpy_helper.to_array(inits[bias_name]))


def _randomise(module: nn.Module) -> None:
    """Fresh weights, as timm initialises a ResNet: build_model's models start random, the converter fills them."""
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class OnnxBackbone(nn.Module):
    """A timm-style classifier around an onnx2torch body: ``forward_features`` gives the last feature map,
    ``forward_head`` pools it (adaptive average) and applies ``fc``.

    ``bgr``: the graph takes BGR channels (the wrapper flips RGB input); ``nhwc``: it takes channels-last input.
    """

    def __init__(self, body: nn.Module, num_features: int, num_classes: int, *, graph_name: str,
                 bgr: bool = False, nhwc: bool = False, pretrained_cfg: dict | None = None):
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.num_classes = num_classes
        self.graph_name = graph_name
        self.bgr = bgr
        self.nhwc = nhwc
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(pretrained_cfg or {})  # read by timm.data.resolve_model_data_config

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way linear head (none for 0); ``global_pool`` is accepted for timm's signature."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _last_conv_width(body: nn.Module) -> int:
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the ONNX body has no convolution to read its feature width from")
    return convs[-1].out_channels


@register_arch("onnx_resnet_1by2")
def build_onnx_resnet_1by2(num_classes: int, *, source=None, **kwargs) -> nn.Module:
    """open_nsfw's ResNet-50 "1by2" from its ONNX file (``source``), randomly initialised.

    The graph takes NHWC BGR 0-255 minus (104, 117, 123); the wrapper flips and permutes, and the model
    config's mean = (123, 117, 104) / 255, std = 1 / 255 turn [0, 1] RGB into 255 * x - mean.
    """
    if kwargs:
        raise TypeError(f"medxfer:onnx_resnet_1by2 takes no arch_kwargs, got {sorted(kwargs)}")
    body = graph_body(source)
    num_features = _last_conv_width(body)
    model = OnnxBackbone(
        body, num_features, num_classes, graph_name=Path(str(source)).name, bgr=True, nhwc=True,
        pretrained_cfg={
            "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center",
            "mean": tuple(float(m) / 255 for m in reversed(_CAFFE_BGR_MEAN)), "std": (1 / 255,) * 3,
            "num_classes": num_classes,
        },
    )
    _randomise(model)
    return model
