"""Given splits (split.source=files): leaks found and reported (dataset.leaks=keep) or removed (drop_leaked), on a
tiny tree with planted copies and a group table; and splits whose files are absent left out when not needed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medxfer.cells import dataset_identity, digest_store, splits_digest
from medxfer.data.datasets import load_dataset
from medxfer.data.tables import DataError
from medxfer.stages.data import render, run_data

from conftest import compose_config


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _tree(root: Path, *, conflict: bool = False) -> None:
    """train tr0..tr7, val va0..va3, test te0..te3 (labels a/b alternating), every image distinct but the planted
    copies: te0 = tr0 and va1 = tr1 byte for byte, tr7 = tr5 (a training copy), te3 = va3; a group table gives
    each image a lesion, te2 sharing tr2's and va2 sharing tr4's."""
    names = {"train": [f"tr{i}" for i in range(8)], "val": [f"va{i}" for i in range(4)],
             "test": [f"te{i}" for i in range(4)]}
    seed = 0
    for split, items in names.items():
        for name in items:
            _png(root / "img" / f"{name}.png", seed)
            seed += 1
    for copy, original in (("te0", "tr0"), ("va1", "tr1"), ("tr7", "tr5"), ("te3", "va3")):
        (root / "img" / f"{copy}.png").write_bytes((root / "img" / f"{original}.png").read_bytes())
    for split, items in names.items():
        rows = ["image,label"]
        for i, name in enumerate(items):
            label = "ab"[i % 2]
            if conflict and name == "te0":
                label = "b"  # tr0 is an a
            rows.append(f"img/{name}.png,{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    lesion = {name: f"L_{name}" for items in names.values() for name in items}
    lesion.update({"te2": "L_tr2", "va2": "L_tr4"})
    (root / "meta.csv").write_text("image_id,lesion_id\n" + "".join(f"{k},{v}\n" for k, v in lesion.items()))


def _node(root: Path, *overrides: str) -> dict:
    from omegaconf import OmegaConf

    cfg = compose_config("data", ["dataset=files", f"dataset.root={root}", "dataset.split.by_group=false", *overrides])
    return OmegaConf.to_container(cfg.dataset, resolve=True)


GROUPS = "+dataset.group_table={csv: meta.csv, key: image_id, group: lesion_id}"


def test_keep_reads_the_splits_as_published_and_reports_every_leak(tmp_path, caplog):
    _tree(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(_node(tmp_path, GROUPS))
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 4)
    tags = data.run_tags()
    assert {k: v for k, v in tags.items() if k.startswith("leak/")} == {
        "leak/policy": "keep", "leak/train_copies": "1", "leak/val_in_train": "1", "leak/test_in_train": "1",
        "leak/test_in_val": "1", "leak/val_groups_in_train": "1", "leak/test_groups_in_train": "1",
        "leak/test_groups_in_val": "0",
    }
    warning = " ".join(r.getMessage() for r in caplog.records if "leak" in r.getMessage())
    assert "1 of 4 test images are byte-identical to a train image" in warning
    assert "1 training images are copies of other training images" in warning
    assert "1 of 4 test images belong to a group (1 groups) with an image in train" in warning
    assert "kept as published" in warning


def test_drop_leaked_removes_the_leaked_rows_and_changes_the_cell(tmp_path, project):
    _tree(tmp_path)
    keep = load_dataset(_node(tmp_path, GROUPS))
    drop = load_dataset(_node(tmp_path, GROUPS, "dataset.leaks=drop_leaked"))
    assert set(drop.train.ids) == {f"img/tr{i}.png" for i in range(7)}  # tr7, a copy of tr5, collapsed
    assert set(drop.val.ids) == {"img/va0.png", "img/va3.png"}  # va1 (= tr1), va2 (tr4's lesion)
    assert set(drop.test.ids) == {"img/te1.png"}  # te0 (= tr0), te2 (tr2's lesion), te3 (= va3)
    assert {k: v for k, v in drop.run_tags().items() if k.startswith("leak/dropped")} == {
        "leak/dropped_train": "1", "leak/dropped_val": "2", "leak/dropped_test": "3"}
    digests = digest_store(project / "cache")
    assert splits_digest(keep, digests) != splits_digest(drop, digests)
    # the policy's name is not part of a cell's identity (keep is what every cell read before it existed): what
    # drop_leaked removes shows in the data digests, as above
    assert dataset_identity(_node(tmp_path, GROUPS)) == dataset_identity(
        {k: v for k, v in _node(tmp_path, GROUPS).items() if k != "leaks"})


def test_drop_leaked_refuses_identical_images_with_different_labels(tmp_path):
    _tree(tmp_path, conflict=True)
    assert load_dataset(_node(tmp_path)).leaks.conflicts == 1  # keep: counted
    with pytest.raises(DataError, match=r"1 group\(s\) of byte-identical images carry different labels"):
        load_dataset(_node(tmp_path, "dataset.leaks=drop_leaked"))


def test_an_unknown_policy_names_the_choices(tmp_path):
    _tree(tmp_path)
    with pytest.raises(DataError, match=r"dataset.leaks='maybe'; expected one of \['keep', 'drop_leaked'\]"):
        load_dataset(_node(tmp_path, "dataset.leaks=maybe"))


def test_an_image_without_a_group_row_is_named(tmp_path):
    _tree(tmp_path)
    (tmp_path / "meta.csv").write_text("image_id,lesion_id\ntr0,L0\n")
    with pytest.raises(DataError, match=r"have no row in the group table meta.csv, e.g. img/tr1.png"):
        load_dataset(_node(tmp_path, GROUPS))


def test_medxfer_data_lists_the_leaks(tmp_path):
    _tree(tmp_path)
    cfg = compose_config("data", ["dataset=files", f"dataset.root={tmp_path}", "dataset.split.by_group=false",
                                  GROUPS, "images=none"])
    report = run_data(cfg)
    assert report.problems == []
    leaks = json.loads(render(report, "json"))["leaks"]
    assert leaks["identical"] == {"val_in_train": 1, "test_in_train": 1, "test_in_val": 1}
    assert leaks["groups"]["test_groups_in_train"] == 1 and leaks["train_copies"] == 1
    assert leaks["examples"]["test_in_train"] == ["img/te0.png"]
    text = render(report, "text")
    assert "test_in_train: 1 of 4 test images are byte-identical to a train image, e.g. img/te0.png" in text
    assert "groups (lesion_id): train 8, val 4, test 4; 2 in more than one of train/val/test" in text


def _with_ood(root: Path, *, present: int) -> list[str]:
    _tree(root)
    names = [f"ood/o{i}.png" for i in range(3)]
    for i, name in enumerate(names[:present]):
        _png(root / name, 100 + i)
    (root / "ood.csv").write_text("image,label\n" + "".join(f"{n},{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    return ["dataset.split.ood=ood.csv", "+dataset.ood={name: scanner_b, source: csv, root: " + str(root) + "}"]


def test_an_absent_ood_set_is_named_once_and_left_out(tmp_path, caplog):
    extra = _with_ood(tmp_path, present=0)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(_node(tmp_path, *extra))
    assert data.ood is None
    why = f"OOD set scanner_b: all 3 files missing under {tmp_path.resolve()}"
    assert data.absent["ood"].startswith(why) and data.absent["ood"].endswith("OOD metrics are not computed")
    named = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"dataset 'files': {data.absent['ood']}")]
    assert len(named) == 1
    assert data.run_tags()["absent_splits"] == "ood"
    with pytest.raises(DataError, match=r"has no out-of-distribution set \(OOD set scanner_b: all 3 files missing"):
        data.split("ood")
    # a stage that needs the OOD set stops, naming the missing files
    with pytest.raises(DataError, match=r"3 image file\(s\) missing \(ood 3 of 3\)"):
        load_dataset(_node(tmp_path, *extra), needed=["train", "ood"])


def test_a_partly_missing_ood_set_is_left_out_saying_how_much_is_missing(tmp_path):
    data = load_dataset(_node(tmp_path, *_with_ood(tmp_path, present=2)))
    assert data.ood is None and "1 of 3 files missing" in data.absent["ood"]
    # medxfer-data lists the missing file as a problem instead (the set is there, but incomplete)
    cfg = compose_config("data", ["dataset=files", f"dataset.root={tmp_path}", "dataset.split.by_group=false",
                                  *_with_ood(tmp_path, present=2), "images=none"])
    report = run_data(cfg)
    assert [p["path"] for p in report.problems if p["kind"] == "missing_file"] == [str(tmp_path / "ood/o2.png")]


def test_a_split_no_stage_needs_may_be_absent_a_needed_one_may_not(tmp_path):
    _tree(tmp_path)
    for i in range(4):
        (tmp_path / "img" / f"te{i}.png").unlink()
    data = load_dataset(_node(tmp_path), needed=["train"])  # scoring the training split
    assert set(data.absent) == {"test"} and "split test: all 4 files missing" in data.absent["test"]
    # the absent split is not searched: no count for it rather than a 0 that would claim it was
    assert data.leaks.identical == {"val_in_train": 1} and "leak/test_in_train" not in data.run_tags()
    with pytest.raises(DataError, match=r"4 image file\(s\) missing \(test 4 of 4\)"):
        load_dataset(_node(tmp_path))  # fine-tuning tests on it


def test_finetune_runs_without_an_absent_ood_set_and_tags_the_run(tmp_path, project):
    import mlflow

    from medxfer.stages.finetune import run_finetune

    data_root = tmp_path / "tree"
    extra = _with_ood(data_root, present=0)
    cfg = compose_config("finetune", [
        "model=efficientnet_lite0", "preprocess.input_size=32", "preprocess.resize=32", "dataset=files",
        f"dataset.root={data_root}", "dataset.split.by_group=false", *extra, "trial=1", "finetune.max_epochs=1",
        "finetune.batch_size=4", "finetune.progress=false", "ood_scores=[]",
    ])
    result = run_finetune(cfg)
    assert "test/bal_acc" in result.metrics and not any(k.startswith("ood/") for k in result.metrics)
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["default/finetune"], output_format="list")
    assert run.data.tags["absent_splits"] == "ood"
    assert run.data.tags["leak/test_in_train"] == "1" and run.data.params["n_ood"] == "0"


def test_a_synthetic_ood_set_is_generated_not_called_absent(tmp_path):
    from omegaconf import OmegaConf

    from conftest import TINY

    cfg = compose_config("data", ["dataset=synthetic_mri", f"paths.data_dir={tmp_path}", *TINY[:6]])
    data = load_dataset(OmegaConf.to_container(cfg.dataset, resolve=True))
    assert data.ood is not None and len(data.ood) > 0 and data.absent == {} and data.run_tags() == {}
