"""The decoded-image cache: same pixels and features as decoding afresh, keyed by content, decoded once per study."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medxfer.cells import table_digest
from medxfer.data.decoded import DecodedBatches, DecodedImageCache, decoded_cache_for, decoded_key
from medxfer.data.tables import SampleTable
from medxfer.digests import FileDigests
from medxfer.data.transforms import Preprocess, eval_transform

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _smooth(rng, h: int, w: int, channels: int) -> np.ndarray:
    """Noise plus gradients: edges and flat areas, so resampling filters and JPEG blocks both matter."""
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    noise = rng.normal(0, 40, (h, w, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> SampleTable:
    """PNG (RGB, grayscale, RGBA, 16-bit) and JPEG (RGB, grayscale) files of sizes above, below and at the crop,
    portrait and landscape."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    specs = [("rgb.png", (300, 420), "RGB"), ("gray.png", (97, 131), "L"), ("rgba.png", (200, 150), "RGBA"),
             ("deep.png", (120, 90), "I;16"), ("photo.jpg", (480, 640), "RGB"), ("tall.jpg", (333, 101), "RGB"),
             ("gray.jpg", (146, 146), "L"), ("small.jpg", (40, 57), "RGB")]
    for name, (h, w), mode in specs:
        path = root / name
        if mode == "I;16":
            Image.fromarray((rng.random((h, w)) * 60000).astype(np.uint16)).save(path)
        else:
            arr = _smooth(rng, h, w, {"RGB": 3, "L": 1, "RGBA": 4}[mode])
            Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths.append(path)
    labels = np.arange(len(paths)) % 2
    return SampleTable(name="files/train", labels=labels, class_names=("a", "b"), paths=tuple(paths))


def _reference(table: SampleTable, p: Preprocess) -> torch.Tensor:
    """Today's path: decode with PIL, then eval_transform, image by image."""
    transform = eval_transform(p)
    return torch.stack([transform(table.load_image(i)) for i in range(len(table))])


def _through_cache(table: SampleTable, p: Preprocess, root: Path, batch_size: int = 3) -> torch.Tensor:
    images, _ = DecodedImageCache(root).images(table, p)
    batches = DecodedBatches(images, table.labels, p.mean, p.std, batch_size)
    return torch.cat([batches[b][0] for b in range(len(batches))])


@pytest.mark.parametrize("p", [
    Preprocess(64, 73, "bicubic", *HALF),
    Preprocess(128, 146, "bilinear", *IMAGENET),
    Preprocess(224, 256, "bicubic", *IMAGENET),
    Preprocess(100, 100, "nearest", *HALF),
])
def test_cached_pixels_equal_todays_preprocessing_bit_for_bit(image_files, tmp_path, p):
    ref = _reference(image_files, p)
    got = _through_cache(image_files, p, tmp_path)
    assert got.dtype == ref.dtype and got.shape == ref.shape == (len(image_files), 3, p.input_size, p.input_size)
    assert torch.equal(got, ref)


def test_in_memory_images_equal_todays_preprocessing(tmp_path):
    rng = np.random.default_rng(1)
    table = SampleTable(name="npz/train", labels=np.array([0, 1, 1]), class_names=("a", "b"),
                        images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    p = Preprocess(64, 73, "bicubic", *IMAGENET)
    assert torch.equal(_through_cache(table, p, tmp_path, batch_size=2), _reference(table, p))


def test_key_follows_pixels_not_normalisation(image_files, tmp_path):
    p = Preprocess(64, 73, "bicubic", *HALF)
    key = decoded_key(image_files, p)
    # models with another mean and std share the decoded file
    assert decoded_key(image_files, Preprocess(64, 73, "bicubic", *IMAGENET)) == key
    for other in (Preprocess(64, 80, "bicubic", *HALF), Preprocess(72, 80, "bicubic", *HALF),
                  Preprocess(64, 73, "bilinear", *HALF)):
        assert decoded_key(image_files, other) != key, other
    # other contents: one image rewritten (size and time change), or a split without one image
    fewer = image_files.subset(np.arange(len(image_files) - 1), "files/train")
    assert decoded_key(fewer, p) != key
    copy = tmp_path / "copy"
    copy.mkdir()
    paths = []
    for path in image_files.paths:
        target = copy / Path(path).name
        target.write_bytes(Path(path).read_bytes())
        paths.append(target)
    table = SampleTable(name=image_files.name, labels=image_files.labels, class_names=image_files.class_names,
                        paths=tuple(paths), ids=image_files.ids)
    before = decoded_key(table, p)
    Image.new("RGB", (50, 50), (9, 9, 9)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    assert decoded_key(table, p) != before


def test_feature_cache_key_changes_whenever_pixels_would(image_files, tmp_path, monkeypatch):
    """The feature cache's key (score and rank) differs for every setting that gives other pixels or another
    normalisation, for other image contents, and for another version of the evaluation pixels."""
    from types import SimpleNamespace

    import medxfer.data.transforms as transforms
    from medxfer.models.extract import FeatureCache, Features
    from medxfer.models.features import split_features

    class RecordingCache(FeatureCache):
        def __init__(self):
            super().__init__(tmp_path)
            self.paths = []

        def load(self, path):
            self.paths.append(path)
            n = len(self.table)
            return Features(np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), self.table.labels)

    cache = RecordingCache()
    spec = SimpleNamespace(arch="tf_efficientnet_lite0", name="m")

    def key(table, p):
        cache.table = table
        split_features(None, spec, "w", table, table_digest(table, FileDigests(None)), "files", "iid", p, cache, {})
        return cache.paths[-1].name

    base = Preprocess(64, 73, "bicubic", *HALF)
    keys = [key(image_files, base)]
    for other in (Preprocess(64, 80, "bicubic", *HALF), Preprocess(72, 80, "bicubic", *HALF),
                  Preprocess(64, 73, "bilinear", *HALF), Preprocess(64, 73, "bicubic", *IMAGENET),
                  Preprocess(64, 73, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.5, 0.5))):
        keys.append(key(image_files, other))
    keys.append(key(image_files.subset(np.arange(len(image_files) - 1), image_files.name), base))
    monkeypatch.setattr(transforms, "EVAL_PIXELS_VERSION", 2)
    keys.append(key(image_files, base))
    assert len(set(keys)) == len(keys), keys


def test_corrupted_or_wrong_shape_file_is_decoded_again(image_files, tmp_path, caplog):
    p = Preprocess(64, 73, "bicubic", *HALF)
    cache = DecodedImageCache(tmp_path)
    first, hit = cache.images(image_files, p)
    assert not hit
    first = np.array(first)  # a copy: the file is overwritten in place below, under any memory map of it
    path = cache.path(image_files, p)
    assert path.is_file() and path.with_suffix(".sha256").is_file()
    assert [f.name for f in tmp_path.iterdir() if ".tmp" in f.name] == []  # no temporary file left behind
    again, hit = cache.images(image_files, p)
    assert hit and np.array_equal(again, first)
    del again

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        rebuilt, hit = cache.images(image_files, p)
    assert not hit and np.array_equal(rebuilt, first)
    assert "corrupted" in caplog.text and str(path) in caplog.text
    del rebuilt

    # a file whose checksum matches but whose shape does not (e.g. written by other code) is not trusted
    np.save(path, np.zeros((2, 64, 64, 3), dtype=np.uint8))
    from medxfer.digests import file_sha256

    path.with_suffix(".sha256").write_text(file_sha256(path) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt, hit = cache.images(image_files, p)
    assert not hit and np.array_equal(rebuilt, first) and "expected uint8" in caplog.text


def test_decoding_with_worker_processes_gives_the_same_file(image_files, tmp_path):
    p = Preprocess(64, 73, "bicubic", *HALF)
    serial, _ = DecodedImageCache(tmp_path / "serial").images(image_files, p, num_workers=0)
    parallel, _ = DecodedImageCache(tmp_path / "parallel").images(image_files, p, num_workers=2)
    assert np.array_equal(serial, parallel)


def test_decoded_cache_option(tmp_path):
    assert decoded_cache_for({"decoded_cache": False}, tmp_path) is None
    assert decoded_cache_for({"decoded_cache": True}, tmp_path).root == tmp_path / "decoded"
    assert decoded_cache_for({}, tmp_path).root == tmp_path / "decoded"  # configs logged before the option
    with pytest.raises(ValueError, match=r"extract\.decoded_cache='yes'; expected true or false"):
        decoded_cache_for({"decoded_cache": "yes"}, tmp_path)


def _count_decodes(monkeypatch, log_file: Path) -> None:
    """Count image decodes, in this process and in loader workers (forked: they inherit the patch and
    append to the same file)."""
    original = SampleTable.load_image

    def counted(self, i, **options):
        with open(log_file, "a") as f:
            f.write(f"{self.name}\t{i}\n")
        return original(self, i, **options)

    monkeypatch.setattr(SampleTable, "load_image", counted)


def _decodes(log_file: Path) -> int:
    return len(log_file.read_text().splitlines()) if log_file.exists() else 0


def test_second_model_on_the_same_data_decodes_no_image(score_cfg, project, monkeypatch):
    """A study's second model with the same preprocessing reads the first one's decoded images: no decode,
    and the same features as extracting it without the cache."""
    from medxfer.data.datasets import load_dataset
    from medxfer.data.transforms import resolve_preprocess
    from medxfer.models.extract import FeatureCache, extract_features
    from medxfer.models.zoo import ModelSpec, create_model, model_data_config, resolve_weights
    from medxfer.stages.score import run_score

    decodes = project / "decodes.txt"
    _count_decodes(monkeypatch, decodes)
    # the two models' timm crop_pct differ; a fixed resize gives them one preprocessing, as preprocess=paper does
    common = ("splits=[train]", "preprocess.resize=73", "score.names=[hscore]", f"paths.cache_dir={project}/cache")
    first = run_score(score_cfg(*common, "model=efficientnet_lite0"))
    assert not first[0].cached_features
    n_train = _decodes(decodes)
    assert n_train > 0 and len(list((project / "cache" / "decoded").glob("*.npy"))) == 1

    second_cfg = score_cfg(*common, "model=efficientnet_lite1")
    second = run_score(second_cfg)
    assert not second[0].cached_features and not second[0].skipped
    assert _decodes(decodes) == n_train  # the second model decoded no image

    # the features it cached equal those extracted without the decoded-image cache
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(second_cfg, resolve=True)
    spec = ModelSpec.from_config(c["model"])
    model = create_model(spec, resolve_weights(spec, cache_dir=c["paths"]["cache_dir"]))
    table = load_dataset(c["dataset"]).train
    preprocess = resolve_preprocess(model_data_config(model, spec), c["preprocess"])
    files = list((project / "cache" / "features" / "efficientnet_lite1").rglob("*.npz"))
    assert len(files) == 1
    cached = FeatureCache(project / "cache" / "features").load(files[0])
    fresh = extract_features(model, table, preprocess, batch_size=c["extract"]["batch_size"], num_workers=0,
                             accelerator="cpu", progress=False, decoded=None)
    assert _decodes(decodes) == n_train + len(table)  # this one decoded: the check above is not vacuous
    np.testing.assert_array_equal(cached.features, fresh.features)
    np.testing.assert_array_equal(cached.probs, fresh.probs)


def test_decoded_cache_off_decodes_for_every_model(score_cfg, project, monkeypatch):
    from medxfer.stages.score import run_score

    decodes = project / "decodes.txt"
    _count_decodes(monkeypatch, decodes)
    common = ("splits=[train]", "preprocess.resize=73", "score.names=[hscore]", "extract.decoded_cache=false",
              f"paths.cache_dir={project}/cache")
    run_score(score_cfg(*common, "model=efficientnet_lite0"))
    once = _decodes(decodes)
    run_score(score_cfg(*common, "model=efficientnet_lite1"))
    assert once > 0 and _decodes(decodes) == 2 * once
    assert not (project / "cache" / "decoded").exists()
