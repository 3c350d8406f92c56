"""medxfer-data: per-split class counts, groups and every problem of a dataset, as text or JSON, without a model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medxfer.data.tables import DataError
from medxfer.stages.data import render, run_data

from conftest import compose_config

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def _split_files(root: Path, rows: dict[str, list[tuple[str, str, str]]]) -> None:
    """``rows``: split -> (image, label, patient); every image is written unless the test removes it."""
    for split, items in rows.items():
        lines = ["image,label,patient"]
        for image, label, patient in items:
            if not (root / image).exists():
                _png(root / image, 60 if label == "a" else 180)
            lines.append(f"{image},{label},{patient}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def _clean(root: Path) -> None:
    _split_files(root, {
        "train": [(f"img/tr{i}.png", "ab"[i % 2], f"p{i}") for i in range(8)],
        "val": [(f"img/va{i}.png", "ab"[i % 2], f"q{i}") for i in range(4)],
        "test": [(f"img/te{i}.png", "ab"[i % 2], f"r{i}") for i in range(4)],
    })


def _command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # python -m: the console script medxfer-data exists once the package is reinstalled
    env = {**os.environ, "MEDXFER_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", "medxfer.cli.data", *args, f"hydra.run.dir={cwd}/hydra"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_json_on_stdout_counts_per_split_and_exit_0(tmp_path):
    _clean(tmp_path)
    out = _command("dataset=files", f"dataset.root={tmp_path}", "dataset.group_col=patient", "format=json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {k: report[k] for k in ("train", "val", "test", "ood")} == {
        "train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}, "ood": None,
    }
    assert report["groups"]["per_split"] == {"train": 8, "val": 4, "test": 4, "ood": None}
    assert report["problems"] == [] and report["dataset"] == "files"


def test_every_problem_is_listed_and_the_command_exits_1(tmp_path):
    _split_files(tmp_path, {
        "train": [("img/t0.png", "a", "p0"), ("img/t1.png", "b", "p1"), ("img/t2.png", "a", "p2"),
                  ("img/shared.png", "b", "p3")],
        "val": [("img/v0.png", "a", "p4"), ("img/shared.png", "b", "p5"), ("img/v1.png", "b", "p6")],
        "test": [("img/e0.png", "a", "p0"), ("img/e1.png", "a", "p7")],   # patient p0 is also in train
    })
    (tmp_path / "img/t1.png").unlink()
    (tmp_path / "img/v0.png").write_bytes(b"not an image")
    overrides = ["dataset=files", f"dataset.root={tmp_path}", "dataset.group_col=patient"]
    report = run_data(compose_config("data", overrides))
    kinds = sorted(p["kind"] for p in report.problems)
    assert kinds == ["group_in_several_splits", "image_in_several_splits", "missing_file", "unreadable_image"]
    problem = {p["kind"]: p for p in report.problems}
    assert problem["missing_file"]["split"] == "train" and problem["missing_file"]["sample"] == "img/t1.png"
    assert problem["unreadable_image"]["path"] == str(tmp_path / "img/v0.png")
    assert problem["image_in_several_splits"]["splits"] == ["train", "val"]
    assert problem["group_in_several_splits"] == {"kind": "group_in_several_splits", "group": "p0", "splits": ["train", "test"]}
    assert report.counts["test"] == {"a": 2, "b": 0}
    text = render(report, "text")
    assert "problems: 4" in text and "missing_file: 1" in text and "img/t1.png" in text
    # by_group=false: the shared patient is reported under groups, not as a problem
    relaxed = run_data(compose_config("data", [*overrides, "dataset.split.by_group=false"]))
    assert "group_in_several_splits" not in {p["kind"] for p in relaxed.problems}
    assert relaxed.groups["across_splits"] == {"p0": ["train", "test"]}
    out = _command(*overrides, cwd=tmp_path)
    assert out.returncode == 1 and "unreadable_image: 1" in out.stdout


def test_decode_finds_a_truncated_image_that_open_does_not(tmp_path):
    _clean(tmp_path)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, "JPEG")
    (tmp_path / "img/te0.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "test.csv").write_text((tmp_path / "test.csv").read_text().replace("img/te0.png", "img/te0.jpg"))
    overrides = ["dataset=files", f"dataset.root={tmp_path}"]
    assert run_data(compose_config("data", overrides)).problems == []
    decoded = run_data(compose_config("data", [*overrides, "images=decode"]))
    assert [(p["kind"], p["sample"]) for p in decoded.problems] == [("unreadable_image", "img/te0.jpg")]


def test_paper_config_without_images_reports_published_counts_and_lists_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    report = run_data(compose_config("data", ["dataset=brain_tumor", f"dataset.root={tmp_path}/empty", "images=none"]))
    assert report.counts["test"] == {"no_tumor": 105, "glioma": 100, "meningioma": 115, "pituitary": 74}
    # the OOD set, not one file of it there, is absent (the stages run without it), not 2,051 problems
    assert report.counts["ood"] is None and report.absent["ood"].startswith("OOD set nins: all 2,051 files missing")
    missing = [p for p in report.problems if p["kind"] == "missing_file"]
    assert len(missing) == len(report.problems) == 2440 + 430 + 394
    assert missing[0]["path"].startswith(f"{tmp_path}/empty/brain_tumor_kaggle/Training/")
    text = render(report, "text")
    assert "missing_file: 3264" in text and "3244 more (format=json lists every one)" in text
    assert "ood      (absent: OOD set nins: all 2,051 files missing" in text


def test_unreadable_dataset_and_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not exist\. Set dataset\.root"):
        run_data(compose_config("data", ["dataset=files", f"dataset.root={tmp_path}/nowhere"]))
    with pytest.raises(DataError, match=r"split file .*val\.csv \(split\.val\) not found"):
        (tmp_path / "train.csv").write_text("image,label\n")
        run_data(compose_config("data", ["dataset=files", f"dataset.root={tmp_path}"]))
    _clean(tmp_path)
    with pytest.raises(ValueError, match=r"images='all': expected one of \['none', 'open', 'decode'\]"):
        run_data(compose_config("data", ["dataset=files", f"dataset.root={tmp_path}", "images=all"]))
    with pytest.raises(ValueError, match=r"format='yaml'"):
        run_data(compose_config("data", ["dataset=files", f"dataset.root={tmp_path}", "format=yaml"]))
    out = _command("dataset=files", f"dataset.root={tmp_path}/nowhere", cwd=tmp_path)
    assert out.returncode == 2 and "medxfer-data: error: dataset 'files'" in out.stderr and out.stdout == ""
