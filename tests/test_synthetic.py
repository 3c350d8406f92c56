"""The synthetic benchmark: file layout, determinism, idempotence, safety, and that the class cues exist."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxfer.data import synthetic
from medxfer.data.synthetic import SYNTHETIC_TASKS, generate_synthetic

TASKS = sorted(SYNTHETIC_TASKS)
CLASSES = {
    "synthetic_derm": ("benign", "malignant"),
    "synthetic_histo": ("benign", "malignant"),
    "synthetic_mri": ("glioma", "meningioma", "no_tumor", "pituitary"),
}


def read_rows(labels: Path) -> list[dict[str, str]]:
    with open(labels, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def images_by_class(root: Path, dtype=np.float64) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for r in read_rows(root / "labels.csv"):
        with Image.open(root / r["image"]) as im:
            out.setdefault(r["label"], []).append(np.asarray(im, dtype=dtype))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """Every task, in- and out-of-distribution, 4 images per class at 32 px."""
    base = tmp_path_factory.mktemp("synthetic")
    return {
        (task, ood): generate_synthetic(task, base / f"{task}_{ood}", n_per_class=4, image_size=32, ood=ood, progress=False)
        for task in TASKS
        for ood in (False, True)
    }


def test_registry():
    assert set(SYNTHETIC_TASKS) == set(CLASSES)
    for name, task in SYNTHETIC_TASKS.items():
        assert task.name == name
        assert task.classes == CLASSES[name]
        assert list(task.classes) == sorted(task.classes)  # label codes match sorted-name encoding
        assert task.image_mode == ("L" if name == "synthetic_mri" else "RGB")
        assert "synthetic" in task.description.lower()


@pytest.mark.parametrize("ood", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_layout_counts_and_images(small, task, ood):
    labels = small[(task, ood)]
    root = labels.parent
    assert labels == root / "labels.csv"
    with open(labels, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["image", "label", "group"]
    rows = read_rows(labels)
    classes = CLASSES[task]
    assert len(rows) == 4 * len(classes)
    assert {r["label"] for r in rows} == set(classes)
    for c in classes:
        assert sum(r["label"] == c for r in rows) == 4
    assert len({r["image"] for r in rows}) == len(rows)
    mode = SYNTHETIC_TASKS[task].image_mode
    for r in rows:
        assert re.fullmatch(r"images/\d{6}\.png", r["image"])
        assert re.fullmatch(r"p\d{4,}", r["group"])
        with Image.open(root / r["image"]) as im:
            assert im.format == "PNG"
            assert im.size == (32, 32)
            assert im.mode == mode
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["task"] == task and meta["ood"] is ood and meta["n_per_class"] == 4 and meta["image_size"] == 32
    assert meta["version"] == synthetic.SYNTHETIC_VERSION
    assert meta["n_images"] == len(rows)
    assert sorted(p.name for p in root.iterdir()) == ["images", "labels.csv", "synthetic.json"]
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("task", TASKS)
def test_groups_hold_one_class_and_one_to_three_images(small, task):
    for ood in (False, True):
        groups: dict[str, list[str]] = {}
        for r in read_rows(small[(task, ood)]):
            groups.setdefault(r["group"], []).append(r["label"])
        assert all(len(set(labels)) == 1 for labels in groups.values())
        assert all(1 <= len(labels) <= 3 for labels in groups.values())
        assert len(groups) < 4 * len(CLASSES[task])  # some patients have several images


def test_images_per_group_option(tmp_path):
    labels = generate_synthetic(
        "synthetic_histo", tmp_path / "d", n_per_class=6, image_size=16, images_per_group=(3, 3), progress=False
    )
    groups: dict[str, list[str]] = {}
    for r in read_rows(labels):
        groups.setdefault(r["group"], []).append(r["label"])
    assert sorted(len(v) for v in groups.values()) == [3, 3, 3, 3]


def test_images_of_one_patient_share_traits_but_differ(small):
    rows = read_rows(small[("synthetic_derm", False)])
    root = small[("synthetic_derm", False)].parent
    by_group: dict[str, list[str]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r["image"])
    multi = [imgs for imgs in by_group.values() if len(imgs) > 1]
    assert multi
    for imgs in multi:
        blobs = [(root / i).read_bytes() for i in imgs]
        assert len(set(blobs)) == len(blobs)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic(tmp_path, task):
    a = generate_synthetic(task, tmp_path / "a", n_per_class=3, image_size=32, seed=7, progress=False).parent
    b = generate_synthetic(task, tmp_path / "b", n_per_class=3, image_size=32, seed=7, progress=False).parent
    assert tree(a) == tree(b)
    c = generate_synthetic(task, tmp_path / "c", n_per_class=3, image_size=32, seed=8, progress=False).parent
    assert tree(c)["images/000000.png"] != tree(a)["images/000000.png"]


@pytest.mark.parametrize("task", TASKS)
def test_ood_is_a_different_stream(small, task):
    ind, ood = small[(task, False)].parent, small[(task, True)].parent
    ind_imgs = {v for k, v in tree(ind).items() if k.startswith("images/")}
    ood_imgs = {v for k, v in tree(ood).items() if k.startswith("images/")}
    assert not ind_imgs & ood_imgs
    assert json.loads((ood / "synthetic.json").read_text())["ood"] is True


def test_idempotent_and_mismatch(tmp_path):
    root = tmp_path / "derm"
    first = generate_synthetic("synthetic_derm", root, n_per_class=3, image_size=24, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = generate_synthetic("synthetic_derm", str(root), n_per_class=3, image_size=24, progress=True)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    with pytest.raises(ValueError, match=r"(?s)derm.*n_per_class=3.*4"):
        generate_synthetic("synthetic_derm", root, n_per_class=4, image_size=24, progress=False)
    with pytest.raises(ValueError, match="ood"):
        generate_synthetic("synthetic_derm", root, n_per_class=3, image_size=24, ood=True, progress=False)
    with pytest.raises(ValueError, match="task"):
        generate_synthetic("synthetic_mri", root, n_per_class=3, image_size=24, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_refuses_foreign_or_broken_folders(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_synthetic("synthetic_mri", foreign, n_per_class=1, image_size=16, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.csv").write_text("image,label,group\n")
    with pytest.raises(ValueError, match="synthetic.json"):
        generate_synthetic("synthetic_mri", broken, n_per_class=1, image_size=16, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    assert generate_synthetic("synthetic_mri", empty, n_per_class=1, image_size=16, progress=False).is_file()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = SYNTHETIC_TASKS["synthetic_histo"].image

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(*args)

    broken_task = synthetic.SyntheticTask(**{**SYNTHETIC_TASKS["synthetic_histo"].__dict__, "image": failing})
    monkeypatch.setitem(SYNTHETIC_TASKS, "synthetic_histo", broken_task)
    root = tmp_path / "histo"
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic("synthetic_histo", root, n_per_class=4, image_size=16, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor the temporary folder


def test_race_loser_accepts_identical_winner(tmp_path, monkeypatch):
    root = tmp_path / "mri"
    kwargs = dict(n_per_class=2, image_size=16, seed=3, progress=False)
    original = synthetic._write
    state = {"inner": False}

    def write_then_lose(*args):
        original(*args)
        if not state["inner"]:  # another process finishes first, while this one is still writing
            state["inner"] = True
            generate_synthetic("synthetic_mri", root, **kwargs)

    monkeypatch.setattr(synthetic, "_write", write_then_lose)
    labels = generate_synthetic("synthetic_mri", root, **kwargs)
    assert labels == root / "labels.csv" and state["inner"]
    assert [p.name for p in tmp_path.iterdir()] == ["mri"]  # the loser's temporary folder is gone
    monkeypatch.setattr(synthetic, "_write", original)
    fresh = generate_synthetic("synthetic_mri", tmp_path / "fresh", **kwargs).parent
    assert tree(root) == tree(fresh)


def test_race_loser_with_other_parameters_raises(tmp_path, monkeypatch):
    root = tmp_path / "mri"
    original = synthetic._write

    def write_then_lose(*args):
        original(*args)
        monkeypatch.setattr(synthetic, "_write", original)
        generate_synthetic("synthetic_mri", root, n_per_class=1, image_size=16, progress=False)

    monkeypatch.setattr(synthetic, "_write", write_then_lose)
    with pytest.raises(ValueError, match="n_per_class"):
        generate_synthetic("synthetic_mri", root, n_per_class=2, image_size=16, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mri"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="synthetic_xray"), "synthetic_derm, synthetic_histo, synthetic_mri"),
        (dict(n_per_class=0), "n_per_class"),
        (dict(n_per_class=2.5), "n_per_class"),
        (dict(image_size=15), "image_size"),
        (dict(seed=-1), "seed"),
        (dict(images_per_group=(0, 2)), "images_per_group"),
        (dict(images_per_group=(3, 2)), "images_per_group"),
        (dict(images_per_group=3), "images_per_group"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(task="synthetic_derm", n_per_class=2, image_size=16)
    args.update(kwargs)
    task = args.pop("task")
    with pytest.raises(ValueError, match=match):
        generate_synthetic(task, tmp_path / "x", progress=False, **args)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ the class cues exist


@pytest.fixture(scope="module")
def cue_sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cues")
    return {
        task: generate_synthetic(task, base / task, n_per_class=10, image_size=48, progress=False).parent
        for task in TASKS
    }


def test_histo_malignant_has_more_nuclear_pixels(cue_sets):
    imgs = images_by_class(cue_sets["synthetic_histo"])
    frac = {c: np.mean([(a.mean(axis=2) < 140).mean() for a in v]) for c, v in imgs.items()}
    assert frac["malignant"] > 2 * frac["benign"]
    dark = {c: np.mean([255 - a.mean() for a in v]) for c, v in imgs.items()}
    assert dark["malignant"] > dark["benign"]


def test_derm_malignant_has_more_dark_pigment(cue_sets):
    imgs = images_by_class(cue_sets["synthetic_derm"])
    frac = {c: np.mean([(a.mean(axis=2) < 60).mean() for a in v]) for c, v in imgs.items()}
    assert frac["malignant"] > frac["benign"]


def test_mri_tumours_are_visible(cue_sets):
    imgs = images_by_class(cue_sets["synthetic_mri"])
    h = 48
    yy, xx = np.mgrid[0:h, 0:h]
    yn, xn = (yy + 0.5) / h * 2 - 1, (xx + 0.5) / h * 2 - 1
    sella = (np.abs(xn) < 0.12) & (yn > 0.18) & (yn < 0.42)  # lower centre: where pituitary masses sit
    brain = (np.abs(xn) < 0.45) & (np.abs(yn) < 0.55)

    def stat(fn):
        return {c: np.mean([fn(a) for a in v]) for c, v in imgs.items()}

    sella_brightness = stat(lambda a: np.percentile(a[sella], 90) / np.median(a[brain]))
    assert sella_brightness["pituitary"] > sella_brightness["no_tumor"]
    bright_outliers = stat(lambda a: np.percentile(a[brain], 99) / np.median(a[brain]))
    for c in ("glioma", "meningioma", "pituitary"):
        assert bright_outliers[c] > bright_outliers["no_tumor"], c
