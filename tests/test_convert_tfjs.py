"""tfjs converters: the .min.js bundles parsed, uint8 weights dequantised exactly, and mapped onto timm-style models."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.layers import Conv2dSame
from torch import nn

from medxfer.models.convert import ConversionError, get_converter
from medxfer.models.convert.tfjs import parse_js_literal, read_js_export, read_tfjs
from medxfer.models.zoo import ModelSpec

from conftest import compose_config

# ---- writing the nsfwjs layout: browserify bundles exporting a minified object literal / a base64 string ----

_UMD = ('!function(e){if("object"==typeof exports&&"undefined"!=typeof module)module.exports=e();else{("undefined"!='
        'typeof window?window:this).{var}=e()}}}}(function(){{return function e(a,n,i){{return n}}({{1:[function(e,a,n){{'
        'a.exports=')
_END = "},{}]},{},[1])(1)});"


def _js(value) -> str:
    """What a minifier writes: unquoted keys, !0/!1, numbers without a leading zero."""
    if isinstance(value, bool):
        return "!0" if value else "!1"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_js(v) for v in value) + "]"
    return "{" + ",".join((k if k.isidentifier() else json.dumps(k)) + ":" + _js(v) for k, v in value.items()) + "}"


def _bundle(path, value, var="model"):
    path.write_text(_UMD.replace("{var}", var).replace("{{", "{").replace("}}", "}") + _js(value) + _END)


def _quantise(rng, shape, dtype="uint8"):
    """Random quantised codes with their min/scale, and the float32 values tfjs decodes them to."""
    q = rng.integers(0, 256 if dtype == "uint8" else 65536, size=shape).astype(dtype)
    lo, scale = float(rng.uniform(-1, 0)), float(rng.uniform(1e-3, 1e-2))
    return q, {"dtype": dtype, "min": lo, "scale": scale}, (q.astype(np.float64) * scale + lo).astype(np.float32)


def _write_folder(folder, topology, tensors, extra=None, rng=None):
    """model.min.js + two group1-shard*of2.min.js files (the byte stream split mid-weight) from ``tensors``:
    {name: float32 array (stored unquantised) or 'uint8'/'uint16' (random quantised)}; returns the decoded values."""
    rng = rng or np.random.default_rng(0)
    specs, chunks, expected = [], [], {}
    for name, how in tensors.items():
        if isinstance(how, np.ndarray):
            specs.append({"name": name, "shape": list(how.shape), "dtype": "float32"})
            chunks.append(how.astype("<f4").tobytes())
            expected[name] = how.astype(np.float32)
        else:
            dtype, shape = how
            q, quant, values = _quantise(rng, shape, dtype)
            specs.append({"name": name, "shape": list(shape), "dtype": "float32", "quantization": quant})
            chunks.append(q.astype(q.dtype.newbyteorder("<")).tobytes())
            expected[name] = values
    data = b"".join(chunks)
    cut = len(data) // 2 + 1
    paths = ["group1-shard1of2", "group1-shard2of2"]
    for path, part in zip(paths, (data[:cut], data[cut:])):
        _bundle(folder / f"{path}.min.js", base64.b64encode(part).decode(), var=path.replace("-", "_"))
    _bundle(folder / "model.min.js", {**(extra or {}), "modelTopology": topology,
                                      "weightsManifest": [{"paths": paths, "weights": specs}]})
    return expected


# ---- a tiny Keras MobileNet-like chain and the matching timm-style target ----

def _layer(kind, name, inbound, **config):
    return {"name": name, "class_name": kind, "config": {"name": name, "trainable": True, **config},
            "inbound_nodes": [[[inbound, 0, 0, {}]]] if inbound else []}


def _conv(kind, name, inbound, k, s, padding, **extra):
    return _layer(kind, name, inbound, kernel_size=[k, k], strides=[s, s], padding=padding, data_format="channels_last",
                  dilation_rate=[1, 1], activation="linear", use_bias=False, **extra)


def _bn(name, inbound, scale=True):
    return _layer("BatchNormalization", name, inbound, axis=-1, momentum=0.999, epsilon=0.001, center=True, scale=scale)


def _keras_tiny(names=("c1", "dw", "pw")):
    c1, dw, pw = names
    layers = [
        _layer("InputLayer", "input_1", None, batch_input_shape=[None, 8, 8, 3], dtype="float32", sparse=False),
        _layer("ZeroPadding2D", "pad", "input_1", padding=[[0, 1], [0, 1]], data_format="channels_last"),
        _conv("Conv2D", c1, "pad", 3, 2, "valid", filters=4), _bn(f"{c1}_bn", c1),
        _layer("ReLU", "relu", f"{c1}_bn", max_value=6, negative_slope=0, threshold=0),
        _conv("DepthwiseConv2D", dw, "relu", 3, 1, "same", depth_multiplier=1), _bn(f"{dw}_bn", dw),
        _conv("Conv2D", pw, f"{dw}_bn", 1, 1, "same", filters=6), _bn(f"{pw}_bn", pw, scale=False),
        _layer("AveragePooling2D", "avg", f"{pw}_bn", pool_size=[4, 4], strides=[4, 4], padding="valid"),
        _layer("Flatten", "flat", "avg"),
        _layer("Dense", "dense_1", "flat", units=5, activation="relu", use_bias=True),
        _layer("Dropout", "drop", "dense_1", rate=0.5),
        _layer("Dense", "dense_2", "drop", units=3, activation="softmax", use_bias=True),
    ]
    topology = {"keras_version": "2.2.4", "backend": "tensorflow",
                "model_config": {"class_name": "Model", "config": {"name": "m", "layers": layers}}}
    tensors = {
        f"{c1}/kernel": ("uint8", (3, 3, 3, 4)), f"{dw}/depthwise_kernel": ("uint8", (3, 3, 4, 1)),
        f"{pw}/kernel": ("uint16", (1, 1, 4, 6)), "dense_1/kernel": ("uint8", (6, 5)), "dense_1/bias": ("uint8", (5,)),
        "dense_2/kernel": ("uint8", (5, 3)), "dense_2/bias": np.arange(3, dtype=np.float32) - 1.5,
    }
    for bn, n, scale in ((f"{c1}_bn", 4, True), (f"{dw}_bn", 4, True), (f"{pw}_bn", 6, False)):
        names_ = (["gamma"] if scale else []) + ["beta", "moving_mean", "moving_variance"]
        tensors.update({f"{bn}/{k}": ("uint8", (n,)) for k in names_})
    return topology, tensors


class Tiny(nn.Module):
    """conv_stem (TF 'SAME', stride 2) -> depthwise 3x3 -> pointwise 1x1, each with a BatchNorm; an MLP head."""

    def __init__(self, head="mlp", eps=1e-3, stem=None):
        super().__init__()
        self.conv_stem = stem or Conv2dSame(3, 4, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(4, eps=eps)
        self.conv_dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(4, eps=eps)
        self.conv_pw = nn.Conv2d(4, 6, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(6, eps=eps)
        self.classifier = {"mlp": lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3)),
                           "linear": lambda: nn.Linear(6, 3), "none": nn.Identity}[head]()

    def get_classifier(self):
        return self.classifier

    def forward(self, x):
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = F.relu6(self.bn2(self.conv_dw(x)))
        return self.classifier(self.bn3(self.conv_pw(x)).mean((2, 3)))


def _load(state, model):
    model.load_state_dict(state, strict=True)
    return model


def test_js_literal_as_minifiers_write_it():
    text = 'a={k:!0,"q-k":[.5,-.25,1e-3,-0,7],s:"x\\"y\\u0041\\n",n:null,f:!1,o:{}}'
    value, end = parse_js_literal(text, 2)
    assert end == len(text)
    assert value == {"k": True, "q-k": [0.5, -0.25, 0.001, 0, 7], "s": 'x"yA\n', "n": None, "f": False, "o": {}}
    with pytest.raises(ConversionError, match="offset"):
        parse_js_literal("{a:foo}")


def test_bundle_with_trailing_code_is_rejected(tmp_path):
    path = tmp_path / "model.min.js"
    _bundle(path, {"a": 1})
    assert read_js_export(path) == {"a": 1}
    path.write_text(path.read_text() + "alert(1);")
    with pytest.raises(ConversionError, match="unexpected code after the exported value"):
        read_js_export(path)


def test_layers_model_dequantised_exactly_onto_the_right_keys(tmp_path):
    topology, tensors = _keras_tiny()
    expected = _write_folder(tmp_path, topology, tensors)
    assert {k: v.tobytes() for k, v in read_tfjs(tmp_path).weights.items()} == {k: v.tobytes() for k, v in expected.items()}
    state = get_converter("tfjs_layers_mobilenetv2")(tmp_path, Tiny(), None)
    model = _load(state, Tiny())

    def same(key, value):
        assert torch.equal(state[key], torch.from_numpy(np.ascontiguousarray(value))), key

    same("conv_stem.weight", expected["c1/kernel"].transpose(3, 2, 0, 1))
    same("conv_dw.weight", expected["dw/depthwise_kernel"].transpose(2, 3, 0, 1))
    same("conv_pw.weight", expected["pw/kernel"].transpose(3, 2, 0, 1))
    same("bn1.weight", expected["c1_bn/gamma"])
    same("bn2.running_var", expected["dw_bn/moving_variance"])
    same("bn3.weight", np.ones(6, np.float32))  # scale=False
    same("bn3.bias", expected["pw_bn/beta"])
    same("classifier.0.weight", expected["dense_1/kernel"].T)
    same("classifier.3.bias", expected["dense_2/bias"])
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert model.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    # head: none drops the Dense layers
    assert "classifier.0.weight" not in get_converter("tfjs_layers_mobilenetv2")(tmp_path, Tiny(head="none"), None)


def test_inception_converter_maps_convs_in_creation_order(tmp_path):
    # Keras lists a functional model's layers by depth, not in creation order; the conv2d_<n> counter is that order
    topology, tensors = _keras_tiny(names=("conv2d_1", "conv2d_2", "conv2d_3"))
    layers = topology["model_config"]["config"]["layers"]
    layers[:] = [*layers[7:9], *layers[:7], *layers[9:]]  # conv2d_3 and its BatchNorm listed first
    expected = _write_folder(tmp_path, topology, tensors)
    state = get_converter("tfjs_layers_inception_v3")(tmp_path, Tiny(), None)
    assert torch.equal(state["conv_stem.weight"], torch.from_numpy(expected["conv2d_1/kernel"].transpose(3, 2, 0, 1).copy()))
    assert torch.equal(state["conv_pw.weight"], torch.from_numpy(expected["conv2d_3/kernel"].transpose(3, 2, 0, 1).copy()))
    assert torch.equal(state["bn3.bias"], torch.from_numpy(expected["conv2d_3_bn/beta"]))
    with pytest.raises(ConversionError, match=r"conv2d_3 kernel \(6, 4, 1, 1\) vs conv_stem.weight \(4, 3, 3, 3\)"):
        get_converter("tfjs_layers_mobilenetv2")(tmp_path, Tiny(), None)  # reads the list as given


@pytest.mark.parametrize("target, message", [
    (lambda: Tiny(head="linear"), r"source head \(Dense \['dense_1 \(5, 6\)', 'dense_2 \(3, 5\)'\]\) does not fit"),
    (lambda: Tiny(eps=1e-5), r"c1 BatchNorm eps 0.001 vs bn1.eps 1e-05"),
    (lambda: Tiny(stem=nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)), r"c1 padding 'same' vs conv_stem .*pad_type"),
    (lambda: Tiny(stem=Conv2dSame(3, 5, 3, stride=2, bias=False)), r"c1 kernel \(4, 3, 3, 3\) vs conv_stem.weight \(5, 3, 3, 3\)"),
])
def test_misfitting_target_names_the_layers(tmp_path, target, message):
    _write_folder(tmp_path, *_keras_tiny())
    with pytest.raises(ConversionError, match=message):
        get_converter("tfjs_layers_mobilenetv2")(tmp_path, target(), None)


def test_extra_target_conv_and_truncated_shard(tmp_path):
    _write_folder(tmp_path, *_keras_tiny())

    class Longer(Tiny):
        def __init__(self):
            super().__init__()
            self.conv_head, self.bn4 = nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6, eps=1e-3)

    with pytest.raises(ConversionError, match=r"3 source convs, Longer has 4; .*unmatched target convs 1 \(conv_head\)"):
        get_converter("tfjs_layers_mobilenetv2")(tmp_path, Longer(), None)
    shard = tmp_path / "group1-shard2of2.min.js"
    text = shard.read_text()
    start = text.index('a.exports="') + len('a.exports="')
    payload = base64.b64decode(text[start:text.index('"', start)])
    shard.write_text(text.replace(base64.b64encode(payload).decode(), base64.b64encode(payload[:-4]).decode()))
    with pytest.raises(ConversionError, match=r"weight pw_bn/moving_variance \(6,\) needs bytes 298..304, the shards hold 300"):
        read_tfjs(tmp_path)


# ---- a tiny TF-Hub-style graph model: BatchNorm folded, hub_input x * 2 - 1 ----

def _node(name, op, inputs=(), **attr):
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def _ints(*v):
    return {"list": {"i": [str(i) for i in v]}}


def _str(s):
    return {"s": base64.b64encode(s.encode()).decode()}


def _fused(*ops):
    return {"list": {"s": [base64.b64encode(o.encode()).decode() for o in ops]}}


def _graph_tiny(mul=2.0):
    conv = dict(strides=_ints(1, 2, 2, 1), padding=_str("SAME"), data_format=_str("NHWC"), dilations=_ints(1, 1, 1, 1))
    nodes = [
        _node("input", "Placeholder"), _node("Mul/y", "Const"), _node("Sub/y", "Const"),
        _node("Mul", "Mul", ["Mul/y", "input"]), _node("Sub", "Sub", ["Mul", "Sub/y"]),
        _node("Conv/w", "Const"), _node("Conv/b", "Const"), _node("dw/w", "Const"), _node("dw/b", "Const"),
        _node("pw/w", "Const"), _node("pw/b", "Const"), _node("fc/w", "Const"), _node("fc/b", "Const"),
        _node("Conv/Relu6", "_FusedConv2D", ["Sub", "Conv/w", "Conv/b"], fused_ops=_fused("BiasAdd", "Relu6"), **conv),
        _node("dw/dw", "FusedDepthwiseConv2dNative", ["Conv/Relu6", "dw/w", "dw/b"], fused_ops=_fused("BiasAdd", "Relu6"),
              **{**conv, "strides": _ints(1, 1, 1, 1)}),
        _node("pw/BN", "_FusedConv2D", ["dw/dw", "pw/w", "pw/b"], fused_ops=_fused("BiasAdd"),
              **{**conv, "strides": _ints(1, 1, 1, 1), "padding": _str("VALID")}),
        _node("pool", "AvgPool", ["pw/BN"], ksize=_ints(1, 4, 4, 1), padding=_str("VALID"), strides=_ints(1, 1, 1, 1)),
        _node("sq", "Squeeze", ["pool"], squeeze_dims=_ints(1, 2)),
        _node("fc", "_FusedMatMul", ["sq", "fc/w", "fc/b"], fused_ops=_fused("BiasAdd"), transpose_a={"b": False},
              transpose_b={"b": False}),
        _node("Softmax", "Softmax", ["fc"]), _node("Identity", "Identity", ["Softmax"]),
    ]
    tensors = {"Conv/w": ("uint8", (3, 3, 3, 4)), "Conv/b": ("uint8", (4,)), "dw/w": ("uint8", (3, 3, 4, 1)),
               "dw/b": ("uint8", (4,)), "pw/w": ("uint8", (1, 1, 4, 6)), "pw/b": ("uint8", (6,)),
               "fc/w": ("uint8", (6, 3)), "fc/b": ("uint8", (3,)),
               "Mul/y": np.array(mul, np.float32), "Sub/y": np.array(1.0, np.float32)}
    return {"node": nodes, "versions": {}}, tensors


def _spec(mean=0.5, std=0.5):
    return ModelSpec(name="tiny", arch="tiny", head="own:3", data={"mean": [mean] * 3, "std": [std] * 3})


def test_graph_model_folded_bn_becomes_an_exact_identity(tmp_path):
    topology, tensors = _graph_tiny()
    w = _write_folder(tmp_path, topology, tensors, extra={"format": "graph-model", "generatedBy": "2.2.0"})
    model = Tiny(head="linear", eps=1e-5)
    state = get_converter("tfjs_graph_mobilenetv2")(tmp_path, model, _spec())
    _load(state, model).eval()
    assert torch.equal(state["bn2.bias"], torch.from_numpy(w["dw/b"]))
    assert torch.equal(state["bn1.weight"], torch.ones(4)) and torch.equal(state["bn3.running_mean"], torch.zeros(6))
    assert torch.allclose(state["bn1.running_var"], torch.full((4,), 1 - 1e-5))
    x = torch.rand(2, 3, 8, 8)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()}
    # the graph's own computation: SAME pads (0, 1) for a 3x3 kernel at stride 2 on an even input
    h = F.conv2d(F.pad(x * 2 - 1, (0, 1, 0, 1)), t["Conv/w"].permute(3, 2, 0, 1), t["Conv/b"], stride=2).clamp(0, 6)
    h = F.conv2d(h, t["dw/w"].permute(2, 3, 0, 1), t["dw/b"], padding=1, groups=4).clamp(0, 6)
    h = F.conv2d(h, t["pw/w"].permute(3, 2, 0, 1), t["pw/b"]).mean((2, 3))
    with torch.no_grad():
        ours = model((x - 0.5) / 0.5)
    torch.testing.assert_close(ours, h @ t["fc/w"] + t["fc/b"], atol=1e-5, rtol=0)


def test_graph_model_checks_the_input_normalisation(tmp_path):
    topology, tensors = _graph_tiny()
    _write_folder(tmp_path, topology, tensors, extra={"format": "graph-model"})
    with pytest.raises(ConversionError, match=r"2 \* x \+ -1.*set data.mean = 0.5 and data.std = 0.5"):
        get_converter("tfjs_graph_mobilenetv2")(tmp_path, Tiny(head="linear", eps=1e-5), _spec(0.0, 1.0))
    with pytest.raises(ConversionError, match=r"a tfjs graph-model, expected a layers model"):
        get_converter("tfjs_layers_mobilenetv2")(tmp_path, Tiny(), None)


# ---- slow: the real nsfwjs models against numbers the tfjs runtime (@tensorflow/tfjs 4, CPU backend) gave ----

CLASSES = ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"]
# tfjs probabilities on scikit-image photos / 255, resized with resizeBilinear(alignCorners=true) as nsfwjs does
TFJS = {
    "mobilenetv2_100_nsfwjs": {"chelsea": [0.001292, 0.000779, 0.930836, 0.062886, 0.004207],
                               "horse": [0.804544, 0.002357, 0.192818, 0.000203, 7.8e-05]},
    "inception_v3_nsfwjs": {"chelsea": [4.7e-05, 5e-06, 0.999923, 2.3e-05, 1e-06],
                            "horse": [0.813857, 0.059593, 0.121094, 0.004882, 0.000574]},
    "mobilenetv2_140_nsfwjs": {"chelsea": [0.733896, 0.011871, 0.249431, 0.003372, 0.00143],
                               "horse": [0.505438, 0.045618, 0.44709, 0.001636, 0.000218]},
}


def _nsfwjs_input(name: str, size: int) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    a = getattr(skimage_data, name)()
    if a.dtype == bool:
        a = (~a).astype(np.uint8) * 255  # the black horse silhouette on white
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    x = torch.from_numpy(a[..., :3]).float().div(255).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TFJS))
def test_real_nsfwjs_models_match_the_tfjs_runtime(name, zoo_cache):
    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import build_model, load_state_dict_file, model_data_config

    node = OmegaConf.to_container(compose_config("score", [f"model={name}"]).model, resolve=True)
    spec = ModelSpec.from_config(node)
    got = fetch_source(spec, zoo_cache)
    model = build_model(spec)
    model.load_state_dict(load_state_dict_file(got.weights), strict=True)
    model.eval()
    config = model_data_config(model, spec)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    tfjs = read_tfjs(got.source)

    def probs(m: nn.Module, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            if spec.head_size:
                return m(x).softmax(-1)[0].numpy()
            h = m.forward_head(m.forward_features(x), pre_logits=True)
            for i, layer in enumerate(("dense_1", "dense_2", "dense_3")):  # the MLP head the converter drops
                h = h @ torch.from_numpy(tfjs.weights[f"{layer}/kernel"]) + torch.from_numpy(tfjs.weights[f"{layer}/bias"])
                h = h.relu() if i < 2 else h.softmax(-1)
            return h[0].numpy()

    plain = {}
    for image, expected in TFJS[name].items():
        x = (_nsfwjs_input(image, config["input_size"][-1]) - mean) / std
        plain[image] = probs(model, x)
        np.testing.assert_allclose(plain[image], expected, atol=1e-4, rtol=0)
        with torch.no_grad():
            assert model(torch.rand(1, 3, 128, 128)).shape == (1, spec.head_size or model.num_features)
    # the package's own task, with the model as the config builds it
    assert CLASSES[int(plain["horse"].argmax())] == "Drawing"
    if name != "mobilenetv2_140_nsfwjs":  # MobileNetV2-1.4 calls chelsea a drawing (0.73), in tfjs too
        assert CLASSES[int(plain["chelsea"].argmax())] == "Neutral"
