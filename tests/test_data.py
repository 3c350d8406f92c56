"""Datasets: CSV, image folders, MedMNIST+ npz, splits, label encoding, image conversion, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxfer.data.datasets import check_scoreable, load_dataset
from medxfer.data.readers import SourceSpec, read_csv, read_folder, read_medmnist
from medxfer.data.splits import split_table
from medxfer.data.tables import DataError, SampleTable

from conftest import compose_config


def _image(path, mode="RGB", size=(20, 16), value=128):
    """A flat image of ``value`` whose last pixel row encodes the file name: no two files are identical (identical
    files in a dataset are refused as duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = np.frombuffer(hashlib.sha256(str(path).encode()).digest(), dtype=np.uint8)[: size[0]]
    if mode == "I;16":
        arr = np.full(size[::-1], value * 256, dtype=np.uint16)
        arr[0, 0] = 0
        arr[-1, : len(tag)] = tag.astype(np.uint16) * value // 255 * 256  # within [0, value]: the range stays
        Image.fromarray(arr).save(path)
    else:
        img = Image.new(mode, size, value if mode in ("L",) else (value,) * len(mode))
        for x, v in enumerate(tag.tolist()):
            img.putpixel((x, size[1] - 1), v if mode == "L" else (v,) * len(mode))
        img.save(path)
    return path


def _csv_dataset(root, n_per_class=6, classes=("b", "a", "c"), groups=True):
    rows = []
    for ci, c in enumerate(classes):
        for i in range(n_per_class):
            rel = f"img/{c}_{i}.png"
            _image(root / rel, value=10 + 40 * ci)
            rows.append({"image": rel, "label": c, "patient": f"{c}{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return SourceSpec(name="toy", source="csv", root=root, group_col="patient" if groups else None)


def test_csv_labels_reencoded_sorted_and_mapping(tmp_path):
    table = read_csv(_csv_dataset(tmp_path, classes=("7", "3", "11")))
    assert table.class_names == ("11", "3", "7")  # string order, not max+1
    assert set(table.labels.tolist()) == {0, 1, 2}
    assert table.paths[0].is_file()


def test_csv_without_label_column_names_file_and_columns(tmp_path):
    (tmp_path / "x.csv").write_text("image,diagnosis\na.png,b\n")
    with pytest.raises(DataError, match=r"x\.csv.*no column 'label'.*diagnosis"):
        read_csv(SourceSpec(name="t", source="csv", root=tmp_path, csv="x.csv"))


def test_csv_empty_label_names_row(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\na.png,x\nb.png,\n")
    with pytest.raises(DataError, match=r"row 3 has an empty label"):
        read_csv(SourceSpec(name="t", source="csv", root=tmp_path))


def test_csv_path_escaping_root_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\n../../etc/passwd,x\n")
    with pytest.raises(DataError, match="outside the dataset root"):
        read_csv(SourceSpec(name="t", source="csv", root=tmp_path))


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    spec = _csv_dataset(tmp_path)
    table = read_csv(spec)
    table.paths[1].unlink()
    with pytest.raises(DataError, match=r"not found: .*b_1\.png"):
        table.load_image(1)
    table.paths[2].write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*b_2\.png"):
        table.load_image(2)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_grayscale_rgba_16bit_palette_become_rgb(tmp_path, mode):
    path = _image(tmp_path / f"x_{mode.replace(';', '')}.png", mode=mode if mode != "P" else "RGB")
    if mode == "P":
        Image.open(path).convert("P").save(path)
    table = SampleTable(name="t", labels=np.array([0]), class_names=("a",), paths=(path,))
    img = table.load_image(0)
    assert img.mode == "RGB" and img.size == (20, 16)
    if mode == "I;16":  # rescaled by its range, not clipped to white
        assert np.asarray(img)[1, 1, 0] == 255 and np.asarray(img)[0, 0, 0] == 0


def test_group_aware_stratified_split(tmp_path):
    table = read_csv(_csv_dataset(tmp_path, n_per_class=12))
    splits = split_table(table, val=0.2, test=0.2, seed=3)
    groups = {s: set(t.groups.tolist()) for s, t in splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert sum(len(t) for t in splits.values()) == len(table)
    for t in splits.values():  # stratified: every class in every split
        assert set(t.labels.tolist()) == {0, 1, 2}
    again = split_table(table, val=0.2, test=0.2, seed=3)
    assert again["test"].ids == splits["test"].ids
    other = split_table(table, val=0.2, test=0.2, seed=4)
    assert other["test"].ids != splits["test"].ids


def test_split_refuses_class_too_small(tmp_path):
    table = read_csv(_csv_dataset(tmp_path, n_per_class=2, groups=False))
    with pytest.raises(DataError, match=r"class 'a' has 2 samples; at least 3"):
        split_table(table, val=0.2, test=0.2, seed=0)


def test_folder_reader_label_level_and_patient_groups(tmp_path):
    for cls, pid in (("benign", "14-22549AB"), ("benign", "14-29960CD"), ("malignant", "15-1234"), ("malignant", "16-5678")):
        for i in range(2):
            name = f"SOB_{cls[0].upper()}_A-{pid}-100-{i:03d}.png"
            _image(tmp_path / cls / "SOB" / "adenosis" / pid / "100X" / name)
    table = read_folder(SourceSpec(name="bh", source="folder", root=tmp_path, label_level=0,
                                   group_pattern=r"SOB_[BM]_[A-Z]+-(\d+-[0-9A-Z]+)-"))
    assert table.class_names == ("benign", "malignant")
    assert sorted(set(table.groups.tolist())) == ["14-22549AB", "14-29960CD", "15-1234", "16-5678"]


def test_folder_missing_root_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*dataset.root="):
        read_folder(SourceSpec(name="bh", source="folder", root=tmp_path / "nope"))


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.tile([[0], [1], [2]], (n // 3, 1))
    np.savez(tmp_path / "pathmnist_28.npz", **arrays)
    tables = read_medmnist(SourceSpec(name="pathmnist", source="medmnist", root=tmp_path, medmnist_flag="pathmnist"))
    assert {k: len(v) for k, v in tables.items()} == {"train": 12, "val": 6, "test": 6}
    assert tables["train"].load_image(0).mode == "RGB"


def test_medmnist_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=rf"dermamnist_64\.npz not found.*put it in {tmp_path}"):
        read_medmnist(SourceSpec(name="d", source="medmnist", root=tmp_path, medmnist_flag="dermamnist", medmnist_size=64))


def test_ood_class_unknown_to_training_is_an_error(tmp_path):
    _csv_dataset(tmp_path / "main", classes=("a", "b"))
    _csv_dataset(tmp_path / "ood", classes=("a", "z"))
    cfg = {"name": "toy", "source": "csv", "root": str(tmp_path / "main"),
           "split": {"val": 0.2, "test": 0.2, "seed": 0},
           "ood": {"name": "toy_ood", "source": "csv", "root": str(tmp_path / "ood")}}
    with pytest.raises(DataError, match=r"classes \['z'\] do not exist in the training data"):
        load_dataset(cfg)
    cfg["ood"]["label_map"] = {"z": "b"}
    ds = load_dataset(cfg)
    assert ds.ood.class_names == ds.class_names and len(ds.ood) == 12


@pytest.mark.parametrize("dataset", ["isic2019", "breakhis", "brain_tumor"])
def test_paper_dataset_configs_give_clear_error_without_files(project, tmp_path, dataset):
    cfg = compose_config("score", [f"dataset={dataset}", f"paths.data_dir={tmp_path}/nowhere"])
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    with pytest.raises(DataError, match=rf"does not exist\. Set dataset\.root=.*{dataset}.*\n.*https://"):
        load_dataset(node)


def test_check_scoreable_single_class_and_empty():
    one = SampleTable(name="d/train", labels=np.zeros(4, dtype=np.int64), class_names=("a", "b"), images=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"single class \('a', 4 samples\)"):
        check_scoreable(one)
    empty = SampleTable(name="d/train", labels=np.zeros(0, dtype=np.int64), class_names=("a", "b"), images=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(DataError, match="is empty"):
        check_scoreable(empty)
