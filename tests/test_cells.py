"""A cell is defined by what it reads: data contents and weights, not where the files sit."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medxfer.cells import SCHEMA, split_name
from medxfer.stages.score import run_score

from conftest import compose_config

N_PER_CLASS = 8


def _dataset(root, seed: int):
    """A small CSV dataset: two classes of 24 px images; ``seed`` changes every pixel, never the file names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for label in ("benign", "malignant"):
        for i in range(N_PER_CLASS):
            name = f"{label}_{i}.png"
            pixels = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name)
            rows.append({"image": name, "label": label})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _score(project, root, *extra):
    cfg = compose_config("score", [
        "dataset=csv", f"dataset.root={root}", "dataset.split.by_group=false", "score=logme", "splits=[train]",
        "preprocess.input_size=64", "extract.progress=false", f"paths.root_dir={project}", *extra])
    return run_score(cfg)[0]


def _finished(project):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/score"])
    return runs[runs["status"] == "FINISHED"]


def test_same_file_names_in_two_folders_are_two_cells_and_two_runs(project):
    a = _score(project, _dataset(project / "A", seed=1))
    b = _score(project, _dataset(project / "B", seed=2))
    assert not a.skipped and not b.skipped, "B was taken for A's finished cell"
    assert a.cell != b.cell
    assert len(_finished(project)) == 2
    assert a.scores["logme"] != b.scores["logme"]


def test_an_edited_image_makes_a_new_cell_and_a_moved_folder_keeps_its_cell(project):
    root = _dataset(project / "A", seed=1)
    first = _score(project, root)
    moved = project / "moved"
    shutil.move(str(root), moved)
    again = _score(project, moved)
    assert again.skipped and again.cell == first.cell, "moving the data folder made a new cell"
    pixels = np.asarray(Image.open(moved / "benign_0.png")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(moved / "benign_0.png")
    edited = _score(project, moved)
    assert not edited.skipped and edited.cell != first.cell
    runs = _finished(project)
    assert len(runs) == 2
    assert set(runs["tags.cell_schema"]) == {str(SCHEMA["score"])}
    assert set(runs["tags.mlflow.runName"]) == {"efficientnet_lite0@csv/train"}


def test_old_split_name_iid_reads_as_train():
    assert split_name("iid") == "train" and split_name("ood") == "ood"
    with pytest.raises(ValueError, match="unknown split 'test'"):
        split_name("test")


def test_a_split_capped_at_null_is_the_same_cell_as_an_uncapped_one():
    from medxfer.cells import dataset_identity

    base = {"name": "d", "root": "/a", "max_samples": {"train": 300, "val": 100}}
    same = {"name": "d", "root": "/b", "max_samples": {"train": 300, "val": 100, "test": None, "ood": None}}
    assert dataset_identity(base) == dataset_identity(same)
    assert dataset_identity({"name": "d", "max_samples": {"test": None}}) == dataset_identity({"name": "d", "max_samples": None})
    assert dataset_identity(base) != dataset_identity({**base, "max_samples": {"train": 200, "val": 100}})
