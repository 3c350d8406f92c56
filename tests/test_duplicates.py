"""Duplicate images in a dataset: an error naming the rows, or dropped (dataset.duplicates=drop) so that no image
is in two splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxfer.data.datasets import load_dataset
from medxfer.data.splits import samples_across_splits
from medxfer.data.tables import DataError


def make_images(root: Path, per_class: int = 6, classes=("a", "b", "c"), seed: int = 0) -> list[tuple[str, str]]:
    """Distinct random PNGs under ``root/img``; returns (relative path, label) rows."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for c in classes:
        for i in range(per_class):
            rel = f"img/{c}{i}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
            rows.append((rel, c))
    return rows


def write_csv(root: Path, rows, name: str = "labels.csv") -> Path:
    path = root / name
    path.write_text("image,label\n" + "".join(f"{r},{label}\n" for r, label in rows))
    return path


def csv_config(root: Path, **extra) -> dict:
    return {"name": "csv", "source": "csv", "root": str(root), "csv": "labels.csv", "image_col": "image",
            "label_col": "label", "group_col": None, "split": {"val": 0.2, "test": 0.2, "seed": 0, "by_group": True},
            "max_samples": None, "ood": None, **extra}


def test_every_row_twice_is_an_error_naming_the_rows(tmp_path):
    rows = make_images(tmp_path)
    write_csv(tmp_path, rows + rows)
    with pytest.raises(DataError) as err:
        load_dataset(csv_config(tmp_path))
    message = str(err.value)
    n = len(rows)
    assert f"{n} image(s) listed more than once" in message
    assert "labels.csv" in message and "img/a0.png" in message
    assert f"row 2, row {n + 2}" in message  # the first image is in rows 2 and n + 2 of the file
    assert "dataset.duplicates=drop" in (err.value.hint or "")


def test_drop_keeps_one_listing_and_no_image_is_in_two_splits(tmp_path, caplog):
    rows = make_images(tmp_path)
    write_csv(tmp_path, rows + rows[::-1])
    data = load_dataset(csv_config(tmp_path, duplicates="drop"))
    tables = {"train": data.train, "val": data.val, "test": data.test}
    assert samples_across_splits(tables) == {}
    listed = [p for t in tables.values() for p in t.paths]
    assert len(listed) == len(set(listed)) == len(rows)
    assert "dropped 18 duplicate listing(s) of 18 image(s)" in caplog.text


def test_identical_file_contents_count_as_duplicates(tmp_path):
    rows = make_images(tmp_path)
    shutil.copyfile(tmp_path / "img" / "b2.png", tmp_path / "img" / "copy.png")
    write_csv(tmp_path, rows + [("img/copy.png", "b")])
    with pytest.raises(DataError) as err:
        load_dataset(csv_config(tmp_path))
    assert "identical files" in str(err.value) and "copy.png" in str(err.value) and "b2.png" in str(err.value)
    data = load_dataset(csv_config(tmp_path, duplicates="drop"))
    kept = {Path(p).name for t in (data.train, data.val, data.test) for p in t.paths}
    assert "b2.png" in kept and "copy.png" not in kept


def test_copies_with_different_labels_are_an_error_even_with_drop(tmp_path):
    rows = make_images(tmp_path)
    write_csv(tmp_path, rows + [(rows[0][0], "b")])
    with pytest.raises(DataError, match="with different labels.*img/a0.png.*labels a/b"):
        load_dataset(csv_config(tmp_path, duplicates="drop"))


def test_image_folder_with_two_equal_files_is_an_error(tmp_path):
    for c in ("x", "y", "z"):
        make_images(tmp_path / c, per_class=3, classes=(c,), seed=ord(c))
    shutil.copyfile(tmp_path / "x" / "img" / "x0.png", tmp_path / "y" / "img" / "same.png")
    cfg = {**csv_config(tmp_path), "name": "folder", "source": "folder", "label_level": 0}
    cfg.pop("csv")
    with pytest.raises(DataError, match="identical files.*x0.png.*same.png"):
        load_dataset(cfg)


def test_unknown_policy_names_the_option(tmp_path):
    make_images(tmp_path)
    with pytest.raises(DataError, match=r"dataset.duplicates='maybe'; expected one of \['error', 'drop'\]"):
        load_dataset(csv_config(tmp_path, duplicates="maybe"))
