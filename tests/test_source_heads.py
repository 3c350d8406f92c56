"""Source heads: ImageNet, a model's own n-class head, a single-logit head, and no head at all."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from medxfer.data.tables import SampleTable
from medxfer.data.transforms import resolve_preprocess
from medxfer.models.extract import extract_features, source_probabilities
from medxfer.models.zoo import ModelError, ModelSpec, create_model, model_data_config, resolve_weights
from medxfer.scores.registry import split_applicable
from medxfer.stages.score import run_score


def _images(tmp_path, n=4):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return SampleTable(name="t", labels=np.array([0, 1] * (n // 2)), class_names=("a", "b"), paths=tuple(paths))


def _weights(tmp_path, num_classes: int):
    torch.manual_seed(0)
    path = tmp_path / f"test_resnet_{num_classes}.pth"
    torch.save(timm.create_model("test_resnet", num_classes=num_classes).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("head, outputs, columns", [("own:3", 3, 3), ("own:1", 1, 2), ("none", 0, 0)])
def test_probabilities_follow_the_source_head(tmp_path, head, outputs, columns):
    spec = ModelSpec.from_config({"name": "t", "arch": "test_resnet", "weights": _weights(tmp_path, outputs),
                                  "hub": False, "head": head})
    model = create_model(spec, resolve_weights(spec))
    feats = extract_features(model, _images(tmp_path), resolve_preprocess(model_data_config(model, spec), {"input_size": 32}),
                             progress=False, accelerator="cpu")
    assert feats.features.shape == (4, model.num_features)
    assert feats.probs.shape == (4, columns) and feats.has_probs == (columns > 0)
    if columns:
        np.testing.assert_allclose(feats.probs.sum(axis=1), 1.0, atol=1e-6)


def test_a_single_logit_is_a_binary_head():
    logits = torch.tensor([[0.0], [2.0]])
    probs = source_probabilities(logits)
    assert probs.shape == (2, 2)
    assert torch.allclose(probs[:, 1], torch.sigmoid(logits[:, 0].double()))
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_head_names_are_checked():
    with pytest.raises(ModelError, match=r"model.head='imagenet'; expected one of"):
        ModelSpec.from_config({"name": "t", "arch": "test_resnet", "head": "imagenet"})
    with pytest.raises(ModelError, match=r"head own:3 but 2 head_classes"):
        ModelSpec.from_config({"name": "t", "arch": "test_resnet", "head": "own:3", "head_classes": ["a", "b"]})


def test_model_data_overrides_the_architectures_normalisation():
    spec = ModelSpec.from_config({"name": "t", "arch": "test_resnet", "head": "none",
                                  "data": {"input_size": 160, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    config = model_data_config(timm.create_model("test_resnet", num_classes=0), spec)
    assert config["input_size"] == (3, 160, 160) and config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)


def test_only_the_probability_scores_need_a_source_head_and_imagenet_top1_its_published_value():
    applicable, not_applicable = split_applicable(["logme", "leep", "nce", "nleep", "hscore"], has_source_head=False)
    assert not_applicable == ["leep", "nce"] and applicable == ["logme", "nleep", "hscore"]
    assert split_applicable(["leep"], has_source_head=True) == (["leep"], [])
    assert split_applicable(["imagenet_top1", "logme"], has_source_head=True) == (["logme"], ["imagenet_top1"])
    top1 = {"imagenet_top1": {"top1": 70.9}}
    assert split_applicable(["imagenet_top1"], has_source_head=False, options=top1) == (["imagenet_top1"], [])


def test_a_headless_model_is_scored_without_leep_and_nce_and_says_so(score_cfg, project, tmp_path):
    weights = _weights(tmp_path, 0)
    results = run_score(score_cfg("model.arch=test_resnet", "model.package=null", f"model.weights={weights}",
                                  "model.head=none", "model.name=test_headless", "score.names=[logme,leep,nce,nleep]",
                                  "splits=[train]"))
    assert set(results[0].scores) == {"logme", "nleep"}
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    run = mlflow.search_runs(experiment_names=["default/score"]).iloc[0]
    assert run["status"] == "FINISHED"
    assert run["tags.scores_not_applicable"] == "leep,nce"
    assert "metrics.score/leep" not in run.index or math.isnan(run["metrics.score/leep"])
    assert math.isfinite(run["metrics.score/logme"])
    assert run["tags.source_head"] == "none" and run["params.source_head_size"] == "0"
