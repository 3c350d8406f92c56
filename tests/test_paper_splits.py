"""The paper's tasks on its published splits: the vendored files, the three dataset configs, medxfer-data's
counts on a stand-in image tree laid out as the CSVs say, and the score and fine-tune stages reading exactly
those splits."""

from __future__ import annotations

import csv
import hashlib
import time
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medxfer.config import reference_dir
from medxfer.data.datasets import load_dataset
from medxfer.data.tables import DataError
from medxfer.stages.data import run_data

from conftest import compose_config, write_stand_in_images

SPLITS = Path(reference_dir("chaves2023/splits"))
FOLDER = {"isic2019": "isic19", "breakhis": "breakhis", "brain_tumor": "brain_tumor"}
OOD_FILE = {"isic2019": "ood/pad-ufes-20.csv", "breakhis": "ood/ICIAR_out_distribution.csv",
            "brain_tumor": "ood/out_test_NINS.csv"}
FILES = {"train": "train_split_01.csv", "val": "val_split_01.csv", "test": "test.csv"}

# VirtualSpaceman/transfer-estimation-medical @ ffe4d42, folder data/: the files must stay byte for byte
SHA256 = {
    "brain_tumor/ood/out_test_NINS.csv": "e9acfd11c48f9e9981a85a2f50fea50725f0181ff504eebb7dc8ca654763b741",
    "brain_tumor/test.csv": "a2fbca602da9038540af2b654a104377a08500a4f4b0005f6c4bb932d97315c5",
    "brain_tumor/train_split_01.csv": "35392cebc6e6865b268425875f2820b3dc02e53792a52d52600bb0182dbf820d",
    "brain_tumor/val_split_01.csv": "5de16d8652876744642e356f7feabf9a22272eec86ccddf2ed4c22942ad714cf",
    "breakhis/ood/ICIAR_out_distribution.csv": "f743384913b41e4a93e7ea58fe0052a4e03687a75d24f5140d59ae6edf7d885c",
    "breakhis/test.csv": "9f431d434a338f40c7d0893fdede72b5a2ff64c3efaed0fcb1d74c4550d60c6a",
    "breakhis/train_split_01.csv": "f0a1c7f53b7f48274f5908cb554c3a838bb328c7741960a50178813510a80024",
    "breakhis/val_split_01.csv": "a1d5ab561d53c932281434e071b76800b6b9d5f80e6a26e4a6386d6fac0706f4",
    "isic19/ood/pad-ufes-20.csv": "2150865662b2119ab1ac46f2eeaa8a04d12d44cd5381440b577406ce0ed4f3c9",
    "isic19/test.csv": "a08a56f0b46b519c9fa656228c82b1a43a70670057c9632116db5bd48ba03610",
    "isic19/train_split_01.csv": "180e1d523305a9a2d64d4d91df3ccf8e84ed2f21325278ebcac020c65511d3df",
    "isic19/val_split_01.csv": "9f8ac5e7ac092e6b839ef29691d04b3026ad6fbcdaab41cdf23aac7429385e5e",
}

# The published class counts (the paper's repository and README), written out rather than read from the files
PUBLISHED = {
    "isic2019": {
        "train": {"not_melanoma": 11684, "melanoma": 3121}, "val": {"not_melanoma": 1707, "melanoma": 224},
        "test": {"not_melanoma": 3467, "melanoma": 396}, "ood": {"not_melanoma": 1209, "melanoma": 52},
    },
    "breakhis": {
        "train": {"benign": 1686, "malignant": 3692}, "val": {"benign": 298, "malignant": 651},
        "test": {"benign": 496, "malignant": 1086}, "ood": {"benign": 100, "malignant": 200},
    },
    "brain_tumor": {
        "train": {"no_tumor": 336, "glioma": 702, "meningioma": 699, "pituitary": 703},
        "val": {"no_tumor": 59, "glioma": 124, "meningioma": 123, "pituitary": 124},
        "test": {"no_tumor": 105, "glioma": 100, "meningioma": 115, "pituitary": 74},
        "ood": {"no_tumor": 1749, "glioma": 114, "meningioma": 112, "pituitary": 76},
    },
}
CODES = {
    "isic2019": {"not_melanoma": 0, "melanoma": 1},
    "breakhis": {"benign": 0, "malignant": 1},
    "brain_tumor": {"no_tumor": 0, "glioma": 1, "meningioma": 2, "pituitary": 3},
}


def published_rows(dataset: str, split: str) -> dict[str, int]:
    """Image path under the dataset root (leading / removed) -> the paper's label code, read with the csv module."""
    name = OOD_FILE[dataset] if split == "ood" else FILES[split]
    with open(SPLITS / FOLDER[dataset] / name, newline="") as fh:
        return {row["image"].lstrip("/"): int(row["label"]) for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def paper_tree(tmp_path_factory) -> Path:
    """Every image of the three tasks as a tiny 8x8 file at the path its CSV gives (35,384 files; about 2 s):
    one encoded image per format, its bytes written to every path with that extension, followed by the path (the
    decoders ignore trailing bytes) so that no two files are identical: identical files are refused as duplicates."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("paper_data")
    write_stand_in_images(root, (rel for dataset in FOLDER for split in (*FILES, "ood")
                                 for rel in published_rows(dataset, split)))
    print(f"paper image tree: {time.perf_counter() - t0:.1f}s")
    return root


def _dataset_node(dataset: str, *overrides: str) -> dict:
    cfg = compose_config("data", [f"dataset={dataset}", *overrides])
    return OmegaConf.to_container(cfg.dataset, resolve=True)


def test_vendored_files_are_the_published_ones_and_ship_in_the_package():
    found = {str(p.relative_to(SPLITS)): hashlib.sha256(p.read_bytes()).hexdigest() for p in SPLITS.rglob("*.csv")}
    assert found == SHA256
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "reference/**/*.csv" in pyproject["tool"]["setuptools"]["package-data"]["medxfer"]
    assert SPLITS.parents[2] == Path(load_dataset.__code__.co_filename).parents[1]  # inside the package medxfer


@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_medxfer_data_reports_the_published_counts(project, paper_tree, dataset):
    t0 = time.perf_counter()
    report = run_data(compose_config("data", [f"dataset={dataset}", f"dataset.root={paper_tree}"]))
    print(f"medxfer-data {dataset} on the full tree: {time.perf_counter() - t0:.1f}s")
    assert {s: report.counts[s] for s in PUBLISHED[dataset]} == PUBLISHED[dataset]
    # class order = the paper's codes
    assert {s: list(report.counts[s]) for s in PUBLISHED[dataset]} == {s: list(CODES[dataset]) for s in PUBLISHED[dataset]}
    assert report.problems == []
    groups = report.groups
    if dataset == "breakhis":
        # published by image: every patient is in train, val and test; reported, and not a problem (by_group=false)
        assert groups["column"] == "sob_id" and groups["by_group"] is False
        assert groups["per_split"] == {"train": 82, "val": 82, "test": 82, "ood": None}
        assert len(groups["across_splits"]) == 82
        assert all(s == ["train", "val", "test"] for s in groups["across_splits"].values())
    else:
        assert groups["across_splits"] == {}
        assert groups["per_split"]["train"] is None  # the files give no patient or lesion
    if dataset == "isic2019":
        assert groups["ood_column"] == "patient_id" and groups["per_split"]["ood"] == 867


@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_every_sample_is_the_published_row_with_the_paper_code(paper_tree, dataset):
    data = load_dataset(_dataset_node(dataset, f"dataset.root={paper_tree}"))
    assert data.label_mapping == CODES[dataset]
    for split in (*FILES, "ood"):
        table = data.split(split)
        assert dict(zip(table.ids, table.labels.tolist())) == published_rows(dataset, split)
        assert all(str(p).startswith(str(paper_tree)) for p in table.paths[:5])


def test_breakhis_by_patient_is_refused_naming_the_groups(paper_tree):
    with pytest.raises(DataError, match=r"82 group\(s\) of column 'sob_id' have images in more than one split file"):
        load_dataset(_dataset_node("breakhis", f"dataset.root={paper_tree}", "dataset.split.by_group=true"))


def test_missing_images_are_refused_before_any_model_runs(tmp_path):
    (tmp_path / "brain_tumor_kaggle").mkdir()
    # the splits a stage needs (fine-tuning: train, val, test) are counted; the OOD set is needed when asked for
    with pytest.raises(DataError, match=r"3264 image file\(s\) missing \(train 2440 of 2440, val 430 of 430, test 394 "
                                        r"of 394\), e\.g\. .*brain_tumor_kaggle/Training/.*medxfer-data dataset=brain_tumor"):
        load_dataset(_dataset_node("brain_tumor", f"dataset.root={tmp_path}"))
    with pytest.raises(DataError, match=r"2051 image file\(s\) missing \(ood 2051 of 2051\)"):
        load_dataset(_dataset_node("brain_tumor", f"dataset.root={tmp_path}"), needed=["ood"])


def _spy_on_load_dataset(monkeypatch, module) -> list:
    seen = []
    original = module.load_dataset

    def spy(cfg, **kwargs):
        data = original(cfg, **kwargs)
        seen.append(data)
        return data

    monkeypatch.setattr(module, "load_dataset", spy)
    return seen


def _assert_published(data, dataset: str, splits) -> None:
    for split in splits:
        rows = published_rows(dataset, split)
        table = data.split(split)
        assert len(table) > 0 and all(rows[i] == code for i, code in zip(table.ids, table.labels.tolist())), split


SMALL = ["model=efficientnet_lite0", "preprocess.input_size=32", "preprocess.resize=32"]


@pytest.mark.parametrize("dataset", list(PUBLISHED))
def test_score_stage_scores_the_published_splits(project, paper_tree, monkeypatch, dataset):
    import mlflow

    import medxfer.plans as plans
    import medxfer.stages.score as score_stage

    seen = _spy_on_load_dataset(monkeypatch, plans)
    cfg = compose_config("score", [*SMALL, f"dataset={dataset}", f"dataset.root={paper_tree}", "score=logme",
                                   "dataset.max_samples={train: 24, ood: 12}", "extract.progress=false"])
    t0 = time.perf_counter()
    results = score_stage.run_score(cfg)
    print(f"score {dataset}: {time.perf_counter() - t0:.1f}s")
    assert [r.split for r in results] == ["train", "ood"] and not any(r.skipped for r in results)
    (data,) = seen
    _assert_published(data, dataset, ("train", "ood"))
    assert len(data.train) <= 24 + len(CODES[dataset]) and len(data.val) == sum(PUBLISHED[dataset]["val"].values())
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/score"])
    by_split = {r["tags.split"]: r for _, r in runs.iterrows()}
    assert int(by_split["train"]["params.n_samples"]) == len(data.train)
    assert int(by_split["ood"]["params.n_samples"]) == len(data.ood)
    labels = mlflow.artifacts.load_dict(f"runs:/{by_split['train']['run_id']}/labels.json")
    assert labels["label_mapping"] == CODES[dataset]


@pytest.mark.parametrize("dataset", ["brain_tumor", "isic2019"])
def test_finetune_stage_trains_and_tests_on_the_published_splits(project, paper_tree, monkeypatch, dataset):
    import medxfer.plans as plans
    import medxfer.stages.finetune as finetune_stage

    seen = _spy_on_load_dataset(monkeypatch, plans)
    cfg = compose_config("finetune", [
        *SMALL, f"dataset={dataset}", f"dataset.root={paper_tree}", "trial=1", "ood_scores=[]",
        "dataset.max_samples={train: 16, val: 8, test: 8, ood: 8}", "finetune.max_epochs=1",
        "finetune.batch_size=8", "finetune.progress=false",
    ])
    assert cfg.preprocess.input_size == 32  # the explicit value wins over the smoke preset's 64 px
    t0 = time.perf_counter()
    result = finetune_stage.run_finetune(cfg)
    print(f"finetune {dataset}: {time.perf_counter() - t0:.1f}s")
    (data,) = seen
    _assert_published(data, dataset, ("train", "val", "test", "ood"))
    assert {"test/bal_acc", "ood/bal_acc"} <= set(result.metrics)
    if dataset == "brain_tumor":  # the test split is Kaggle's Testing/ folder, train and val its Training/
        assert all(i.startswith("brain_tumor_kaggle/Testing/") for i in data.test.ids)
        assert all(i.startswith("brain_tumor_kaggle/Training/") for i in (*data.train.ids, *data.val.ids))
