"""``preprocess.decode=reduced``: JPEGs decoded at a DCT scale that still covers the resize, off by default; its
pixels are another cell and another cache file, and full decoding keeps every id and key it had."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from medxfer.cells import finetune_cell, score_cell
from medxfer.data.decoded import CHANNELS, DecodedBatches, DecodedImageCache, decoded_key
from medxfer.data.tables import SampleTable, table_digest
from medxfer.data.transforms import (
    EVAL_PIXELS_VERSION, ImageDataset, Preprocess, eval_transform, resolve_preprocess,
)
from medxfer.digests import FileDigests, hash_parts
from medxfer.errors import ConfigError

TIMM = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SampleTable:
    """A 512 px MRI-like JPEG, a landscape JPEG, a grayscale JPEG, a PNG, a JPEG smaller than the resize."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w), channels in [("mri.jpg", (512, 512), 3), ("wide.jpg", (333, 500), 3),
                                   ("gray.jpg", (400, 300), 1), ("scan.png", (512, 512), 3), ("tiny.jpg", (60, 90), 3)]:
        base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
        arr = np.clip(base + rng.normal(0, 30, (h, w, channels)), 0, 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(root / name, **({"quality": 92} if name.endswith("jpg") else {}))
        paths.append(root / name)
    return SampleTable(name="jpegs/train", labels=np.arange(len(paths)) % 2, class_names=("a", "b"), paths=tuple(paths))


def _p(decode: str = "full", size: int = 64, resize: int = 73) -> Preprocess:
    return resolve_preprocess(TIMM, {"input_size": size, "resize": resize, "decode": decode})


def test_draft_decodes_a_jpeg_at_the_smallest_scale_that_covers_the_size(files):
    sizes = [files.load_image(i, draft=73).size for i in range(len(files))]
    assert sizes[0] == (128, 128)          # 512 / 4: 512 / 8 = 64 would fall below 73
    assert sizes[1] == (125, 84)           # 500 x 333 / 4, both sides >= 73
    assert sizes[2] == (75, 100)           # grayscale JPEG: 300 x 400 / 4, and still RGB
    assert files.load_image(2, draft=73).mode == "RGB"
    assert sizes[3] == (512, 512)          # a PNG has no reduced decoding
    assert sizes[4] == (90, 60)            # smaller than the size already: decoded in full
    full = [files.load_image(i) for i in range(len(files))]
    assert [img.size for img in full][:2] == [(512, 512), (500, 333)]
    assert np.array_equal(np.asarray(files.load_image(3, draft=73)), np.asarray(full[3]))


def test_full_decoding_is_the_default_and_changes_nothing(files):
    p = resolve_preprocess(TIMM, {"input_size": 64, "resize": 73})
    assert p.decode == "full" and p.draft_size is None and "decode" not in p.as_dict()
    assert _p("reduced").draft_size == 73 and _p("reduced").as_dict()["decode"] == "reduced"
    # the decoded-image key of full decoding is the one the key had before the option existed
    old = hash_parts({"pixels": EVAL_PIXELS_VERSION, "content": table_digest(files, FileDigests(None)), "resize": 73,
                      "crop": 64, "interpolation": "bicubic", "channels": CHANNELS}, length=20)
    assert decoded_key(files, p) == old
    assert decoded_key(files, _p("reduced")) != old


def test_reduced_pixels_are_the_same_fresh_and_through_the_decoded_cache(files, tmp_path):
    p = _p("reduced")
    fresh = torch.stack([ImageDataset(files, eval_transform(p), draft=p.draft_size)[i][0] for i in range(len(files))])
    images, _ = DecodedImageCache(tmp_path).images(files, p)
    cached = DecodedBatches(images, files.labels, p.mean, p.std, 2)
    assert torch.equal(torch.cat([cached[b][0] for b in range(len(cached))]), fresh)
    full = torch.stack([ImageDataset(files, eval_transform(_p()))[i][0] for i in range(len(files))])
    assert fresh.shape == full.shape == (5, 3, 64, 64)
    assert not torch.equal(fresh[0], full[0])       # other pixels for the JPEGs ...
    assert torch.equal(fresh[3], full[3])           # ... the same for the PNG
    assert DecodedImageCache(tmp_path).path(files, p) != DecodedImageCache(tmp_path).path(files, _p())


def test_an_unknown_decoder_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"preprocess.decode='fast'; expected one of \['full', 'reduced'\]"):
        resolve_preprocess(TIMM, {"decode": "fast"})


def _config(decode):
    preprocess = {"input_size": 64, "resize": 73, "interpolation": None, "mean": None, "std": None}
    if decode is not None:
        preprocess["decode"] = decode
    return {"model": {"name": "m", "arch": "efficientnet_lite0"}, "dataset": {"name": "d"}, "preprocess": preprocess,
            "trial": 0, "finetune": {"seed": 0}}


def test_full_decoding_keeps_every_cell_id_and_reduced_decoding_is_another_cell():
    table = SampleTable(name="d/train", labels=np.array([0, 1]), class_names=("a", "b"),
                        images=np.zeros((2, 8, 8, 3), np.uint8))
    digests = FileDigests(None)

    def ids(decode):
        c = _config(decode)
        return (score_cell(c, "train", table, ["logme"], None, "hub:x", digests).id,
                finetune_cell(c, "data", "hub:x").id)

    before = ids(None)  # the config as it was before preprocess.decode existed
    assert ids("full") == before
    reduced = ids("reduced")
    assert reduced[0] != before[0] and reduced[1] != before[1]
