"""TF-slim MobileNetV1 frozen GraphDef -> timm mobilenetv1_100, without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from tensorboard.compat.proto import graph_pb2, tensor_pb2

from medxfer.models.convert import ConversionError, get_converter
from medxfer.models.convert.tf_graphdef import decode_tensor, graphdef_constants
from medxfer.models.zoo import ModelSpec

from conftest import compose_config

ARCH_KWARGS = {"bn_eps": 1e-3, "pad_type": "same"}
SPEC = ModelSpec(name="tiny", arch="mobilenetv1_100", arch_kwargs=ARCH_KWARGS, hub=False)


def _tensor(value: np.ndarray) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=1)  # DT_FLOAT
    for size in value.shape:
        proto.tensor_shape.dim.add(size=size)
    if value.ndim == 0:
        proto.float_val.append(float(value))  # how TF stores scalars such as the BN epsilon
    else:
        proto.tensor_content = np.ascontiguousarray(value, dtype="<f4").tobytes()
    return proto


def _write_graph(path, consts: dict[str, np.ndarray]) -> None:
    graph = graph_pb2.GraphDef()
    for name, value in consts.items():
        node = graph.node.add(name=name, op="Const")
        node.attr["dtype"].type = 1
        node.attr["value"].tensor.CopyFrom(_tensor(np.asarray(value, dtype=np.float32)))
    graph.node.add(name="input", op="Placeholder")
    path.write_bytes(graph.SerializeToString())


def _slim_constants(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random constants named and shaped as in a frozen slim MobileNetV1-1.0 graph (13 blocks)."""
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    consts: dict[str, np.ndarray] = {}

    def conv_bn(layer: str, leaf: str, kernel: tuple[int, ...]) -> None:
        consts[f"MobilenetV1/{layer}/{leaf}"] = rng.standard_normal(kernel).astype(np.float32)
        n = kernel[-2] if leaf == "depthwise_weights" else kernel[-1]
        for bn in ("gamma", "beta", "moving_mean"):
            consts[f"MobilenetV1/{layer}/BatchNorm/{bn}"] = rng.standard_normal(n).astype(np.float32)
        consts[f"MobilenetV1/{layer}/BatchNorm/moving_variance"] = rng.uniform(0.5, 2, n).astype(np.float32)
        consts[f"MobilenetV1/MobilenetV1/{layer}/BatchNorm/batchnorm/add/y"] = np.float32(1e-3)

    conv_bn("Conv2d_0", "weights", (3, 3, 3, 32))
    for i in range(1, 14):
        conv_bn(f"Conv2d_{i}_depthwise", "depthwise_weights", (3, 3, widths[i - 1], 1))
        conv_bn(f"Conv2d_{i}_pointwise", "weights", (1, 1, widths[i - 1], widths[i]))
    consts["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = rng.standard_normal((1, 1, 1024, 1001)).astype(np.float32)
    consts["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = rng.standard_normal(1001).astype(np.float32)
    # the nudity package's retrained head on top of the 1001 logits: not part of the backbone
    consts["final_training_ops/weights/final_weights"] = rng.standard_normal((1001, 2)).astype(np.float32)
    consts["final_training_ops/biases/final_biases"] = np.zeros(2, np.float32)
    return consts


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    consts = _slim_constants(np.random.default_rng(0))
    consts["MobilenetV1/Conv2d_0/weights"][0, 1, 2, 5] = 42.0  # (h, w, in, out)
    consts["MobilenetV1/Conv2d_5_depthwise/depthwise_weights"][2, 0, 7, 0] = 43.0  # (h, w, channel, 1)
    consts["MobilenetV1/Conv2d_13_pointwise/weights"][0, 0, 3, 9] = 44.0
    consts["MobilenetV1/Logits/Conv2d_1c_1x1/weights"][0, 0, 3, 1] = 45.0  # output 1 = ImageNet class 0
    path = tmp_path_factory.mktemp("graph") / "retrained_graph.pb"
    _write_graph(path, consts)
    return path, consts


def _model(num_classes: int = 1000, **kwargs):
    return timm.create_model("mobilenetv1_100", pretrained=False, num_classes=num_classes, **{**ARCH_KWARGS, **kwargs})


def test_decode_tensor_reads_raw_bytes_and_splat_values():
    raw = tensor_pb2.TensorProto(dtype=3, tensor_content=np.arange(6, dtype="<i4").tobytes())  # DT_INT32
    raw.tensor_shape.dim.add(size=2)
    raw.tensor_shape.dim.add(size=3)
    assert decode_tensor(raw).tolist() == [[0, 1, 2], [3, 4, 5]]
    splat = tensor_pb2.TensorProto(dtype=1, float_val=[0.5])  # a filled constant stores one value
    splat.tensor_shape.dim.add(size=4)
    assert decode_tensor(splat).tolist() == [0.5] * 4
    half = tensor_pb2.TensorProto(dtype=19, half_val=[int(np.float16(1.5).view(np.uint16))])  # DT_HALF bits
    assert decode_tensor(half) == np.float16(1.5) and decode_tensor(half).shape == ()


def test_graphdef_constants_returns_every_const_node(slim):
    path, consts = slim
    got = graphdef_constants(path)
    assert set(got) == set(consts)  # the Placeholder is not a constant
    name = "MobilenetV1/Conv2d_3_pointwise/weights"
    assert got[name].dtype == np.float32 and np.array_equal(got[name], consts[name])


def test_slim_constants_land_on_timm_keys(slim):
    path, consts = slim
    model = _model()
    state = get_converter("tf_graphdef_mobilenetv1")(path, model, SPEC)
    model.load_state_dict(state, strict=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert state["conv_stem.weight"][5, 2, 0, 1] == 42.0  # HWIO -> OIHW
    assert state["blocks.2.1.conv_dw.weight"][7, 0, 2, 0] == 43.0  # Conv2d_5: timm's 5th block; (C, 1, H, W)
    assert state["blocks.4.1.conv_pw.weight"][9, 3, 0, 0] == 44.0
    assert state["classifier.weight"].shape == (1000, 1024) and state["classifier.weight"][0, 3] == 45.0
    assert torch.equal(state["classifier.bias"], torch.from_numpy(consts["MobilenetV1/Logits/Conv2d_1c_1x1/biases"][1:]))
    assert torch.equal(state["blocks.0.0.bn2.running_var"],
                       torch.from_numpy(consts["MobilenetV1/Conv2d_1_pointwise/BatchNorm/moving_variance"]))
    assert torch.equal(state["bn1.weight"], torch.from_numpy(consts["MobilenetV1/Conv2d_0/BatchNorm/gamma"]))


def test_headless_target_drops_the_logits(slim):
    path, _ = slim
    model = _model(num_classes=0)
    model.load_state_dict(get_converter("tf_graphdef_mobilenetv1")(path, model, SPEC), strict=True)


def test_misfitting_graph_names_unmatched_constants_and_keys(slim, tmp_path):
    _, consts = slim
    consts = dict(consts)
    del consts["MobilenetV1/Conv2d_7_depthwise/BatchNorm/gamma"]
    consts["MobilenetV1/Conv2d_14_pointwise/weights"] = np.zeros((1, 1, 1024, 1024), np.float32)
    path = tmp_path / "bad.pb"
    _write_graph(path, consts)
    with pytest.raises(ConversionError) as err:
        get_converter("tf_graphdef_mobilenetv1")(path, _model(), SPEC)
    assert "blocks.3.1.bn1.weight" in str(err.value)  # Conv2d_7 = timm's 7th block (stages of 1, 2, 2, 6, 2)
    assert "MobilenetV1/Conv2d_14_pointwise/weights" in str(err.value)


def test_wrong_padding_or_bn_eps_is_refused(slim):
    path, _ = slim
    convert = get_converter("tf_graphdef_mobilenetv1")
    with pytest.raises(ConversionError, match="bn_eps=0.001"):
        convert(path, _model(bn_eps=1e-5), ModelSpec(name="x", arch="mobilenetv1_100", arch_kwargs={"pad_type": "same"}))
    with pytest.raises(ConversionError, match="pad_type=same"):
        convert(path, _model(pad_type=""), ModelSpec(name="x", arch="mobilenetv1_100", arch_kwargs={"bn_eps": 1e-3}))


def test_not_a_graphdef_is_refused(tmp_path):
    path = tmp_path / "junk.pb"
    path.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(ConversionError, match="junk.pb"):
        graphdef_constants(path)


# ---- slow: the real graph from PyPI, run by a small NHWC interpreter of its own ops as the reference ----

def _same_pad(x: np.ndarray, k: tuple[int, int], s: tuple[int, int]) -> np.ndarray:
    """TensorFlow 'SAME': output = ceil(in / stride); the odd pixel of padding goes after (bottom/right)."""
    pads = []
    for size, kk, ss in zip(x.shape[1:3], k, s):
        total = max((-(-size // ss) - 1) * ss + kk - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])


def _conv(x: np.ndarray, w: np.ndarray, strides, padding: bytes, depthwise: bool) -> np.ndarray:
    kh, kw = w.shape[:2]
    sh, sw = strides[1], strides[2]
    if padding == b"SAME":
        x = _same_pad(x, (kh, kw), (sh, sw))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            out = out + (patch * w[i, j, :, 0] if depthwise else patch @ w[i, j])
    return out


def _run_graph(path, image: np.ndarray, output: str) -> np.ndarray:
    """Evaluate ``output`` of a frozen inference graph on an NHWC image, in float64, for the ops MobileNetV1 uses."""
    graph = {node.name: node for node in graph_pb2.GraphDef.FromString(path.read_bytes()).node}
    consts = graphdef_constants(path)
    cache: dict[str, np.ndarray] = {}

    def ev(name: str) -> np.ndarray:
        name = name.split(":")[0]
        if name in cache:
            return cache[name]
        node = graph[name]
        args = [ev(i) for i in node.input if not i.startswith("^")]
        op = node.op
        if op == "Const":
            out = consts[name].astype(np.float64) if consts[name].dtype.kind == "f" else consts[name]
        elif op == "Placeholder":
            out = image
        elif op in ("Identity", "PlaceholderWithDefault"):
            out = args[0]
        elif op in ("Add", "BiasAdd", "AddV2"):
            out = args[0] + args[1]
        elif op == "Sub":
            out = args[0] - args[1]
        elif op == "Mul":
            out = args[0] * args[1]
        elif op == "Rsqrt":
            out = 1.0 / np.sqrt(args[0])
        elif op == "Relu6":
            out = np.clip(args[0], 0.0, 6.0)
        elif op in ("Conv2D", "DepthwiseConv2dNative"):
            assert node.attr["data_format"].s in (b"", b"NHWC") and list(node.attr["dilations"].list.i) in ([], [1, 1, 1, 1])
            out = _conv(args[0], args[1], list(node.attr["strides"].list.i), node.attr["padding"].s, op != "Conv2D")
        elif op == "AvgPool":
            k, s = list(node.attr["ksize"].list.i), list(node.attr["strides"].list.i)
            assert node.attr["padding"].s == b"VALID" and args[0].shape[1:3] == tuple(k[1:3]), "global pooling only"
            out = args[0].mean(axis=(1, 2), keepdims=True)
        elif op == "Squeeze":
            dims = tuple(node.attr["squeeze_dims"].list.i) or None
            out = np.squeeze(args[0], axis=dims)
        elif op == "Reshape":
            out = args[0].reshape(args[1])
        elif op == "MatMul":
            out = args[0] @ args[1]
        elif op == "Softmax":
            e = np.exp(args[0] - args[0].max(-1, keepdims=True))
            out = e / e.sum(-1, keepdims=True)
        else:
            raise NotImplementedError(f"op {op} ({name})")
        cache[name] = out
        return out

    return ev(output)


@pytest.mark.slow
def test_real_graph_matches_its_own_computation_and_classifies(zoo_cache):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import build_model, load_state_dict_file, model_data_config

    node = OmegaConf.to_container(compose_config("score", ["model=mobilenetv1_100_nudity"]).model, resolve=True)
    spec = ModelSpec.from_config(node)
    got = fetch_source(spec, zoo_cache)
    model = build_model(spec)
    model.load_state_dict(load_state_dict_file(got.weights), strict=True)
    model.eval()
    transform = timm.data.create_transform(**model_data_config(model, spec))
    top = {}
    for name in ("chelsea", "coffee"):
        x = transform(Image.fromarray(getattr(skimage_data, name)()))[None]  # 224 px, x/127.5 - 1
        with torch.no_grad():
            ours = model(x)[0].double().numpy()
        theirs = _run_graph(got.source, x.permute(0, 2, 3, 1).double().numpy(), "MobilenetV1/Predictions/Reshape")[0]
        assert theirs.shape == (1001,)
        np.testing.assert_allclose(ours, theirs[1:], atol=1e-4, rtol=0)  # output 0 of the graph is background
        top[name] = int(ours.argmax())
    assert 281 <= top["chelsea"] <= 285, top
    assert top["coffee"] in (967, 968, 504), top  # espresso, cup, coffee mug
