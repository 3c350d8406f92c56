"""Acceptance catalogue of bad inputs, tried as a user would: each stops within seconds with a non-zero exit,
a message naming the fault and no traceback, and leaves the store with no RUNNING run and earlier runs unchanged.

Most cases call the stage through the same wrapper the console scripts use (``reports_errors``), on the config
the command would compose; a few run the real console scripts in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import TINY, compose_config
from medxfer.cli._errors import reports_errors

BIN = Path(sys.executable).parent
#: In-process cases stop within this many seconds (the slowest build a model before failing).
IN_PROCESS_LIMIT_S = 20
#: Console-script cases include the interpreter's start and the imports (slow on a loaded machine).
SUBPROCESS_LIMIT_S = 90


# --- fixtures: a project with an earlier finished run, small CSV datasets -------------------------------------

@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """A SQLite store with one FINISHED score run, copied into each case's project."""
    root = tmp_path_factory.mktemp("template")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    exp = mlflow.create_experiment("default/score", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp, run_name="earlier", tags={"stage": "score", "cell": "earlier"}):
        mlflow.log_metric("score/logme", 0.5)
    return root / "mlflow.db"


def _runs(db: Path) -> dict[str, tuple]:
    client = MlflowClient(f"sqlite:///{db}")
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            out[run.info.run_id] = (run.info.status, run.info.end_time, tuple(sorted(run.data.metrics.items())),
                                    run.data.tags.get("error", ""))
    return out


@dataclass
class Ctx:
    """What a case builds its overrides from."""

    root: Path       # the project (MEDXFER_ROOT); its store is root/mlruns/mlflow.db
    data: Path       # shared synthetic data
    csv: Path        # a folder with good images (3 classes x 6) and no labels.csv yet
    cleanup: list = field(default_factory=list)

    def write_csv(self, rows: list[tuple[str, str]], name: str = "labels.csv") -> Path:
        path = self.csv / name
        path.write_text("image,label\n" + "".join(f"{r},{label}\n" for r, label in rows))
        return path

    @property
    def good_rows(self) -> list[tuple[str, str]]:
        return [(f"img/{c}{i}.png", c) for c in "abc" for i in range(6)]

    def csv_dataset(self, rows=None) -> list[str]:
        self.write_csv(self.good_rows if rows is None else rows)
        return ["dataset=csv", f"dataset.root={self.csv}", "preprocess.input_size=64", "extract.progress=false",
                "splits=[train]"]


@pytest.fixture
def ctx(project, shared_data_dir, template_store) -> Ctx:
    (project / "mlruns").mkdir()
    shutil.copyfile(template_store, project / "mlruns" / "mlflow.db")
    csv = project / "mine"
    (csv / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in "abc":
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(csv / "img" / f"{c}{i}.png")
    return Ctx(project, shared_data_dir, csv)


def bomb_png(path: Path, width: int = 40000, height: int = 40000) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


# --- the catalogue -----------------------------------------------------------------------------------------------

def _synthetic(ctx: Ctx, *more: str) -> list[str]:
    return [f"paths.data_dir={ctx.data}", *TINY, "splits=[train]", *more]


def _weights(ctx: Ctx, content: bytes | Callable[[Path], None], suffix: str = ".pth") -> list[str]:
    path = ctx.root / f"weights{suffix}"
    content(path) if callable(content) else path.write_bytes(content)
    return _synthetic(ctx, f"model.weights={path}")


def _dupe_rows(ctx: Ctx) -> list[str]:
    return ctx.csv_dataset(ctx.good_rows + ctx.good_rows)


def _same_bytes(ctx: Ctx) -> list[str]:
    shutil.copyfile(ctx.csv / "img" / "a1.png", ctx.csv / "img" / "twin.png")
    return ctx.csv_dataset(ctx.good_rows + [("img/twin.png", "a")])


def _bomb(ctx: Ctx) -> list[str]:
    bomb_png(ctx.csv / "img" / "a0.png")
    return ctx.csv_dataset()


def _ro_store(ctx: Ctx) -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    mount = ctx.root / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    ctx.cleanup.append(lambda: subprocess.run(["umount", str(mount)], check=False))
    (mount / "mlruns").mkdir()
    shutil.copyfile(ctx.root / "mlruns" / "mlflow.db", mount / "mlruns" / "mlflow.db")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    return _synthetic(ctx, f"tracking.uri=sqlite:///{mount}/mlruns/mlflow.db")


def _ro_new_store(ctx: Ctx) -> list[str]:
    args = _ro_store(ctx)
    return [*args[:-1], f"tracking.uri=sqlite:///{ctx.root}/ro/mlruns/new.db"]


def _csv_text(ctx: Ctx, text: str) -> list[str]:
    args = ctx.csv_dataset()
    (ctx.csv / "labels.csv").write_text(text)
    return args


@dataclass
class Case:
    id: str
    config: str                                # score | finetune
    overrides: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]                    # substrings of stderr
    env: dict[str, str] | None = None


S = "score"
CASES = [
    # data: duplicates and leakage
    Case("csv_every_row_twice", S, _dupe_rows, ("18 image(s) listed more than once", "row 2, row 20", "dataset.duplicates=drop")),
    Case("csv_identical_files", S, _same_bytes, ("identical files", "a1.png", "twin.png", "row 3, row 20")),
    Case("csv_copy_other_label", S, lambda c: [*c.csv_dataset(c.good_rows + [("img/a0.png", "b")]), "dataset.duplicates=drop"],
         ("with different labels", "img/a0.png", "labels a/b")),
    Case("duplicates_policy_unknown", S, lambda c: [*c.csv_dataset(), "dataset.duplicates=maybe"],
         ("dataset.duplicates='maybe'", "expected one of ['error', 'drop']")),
    # data: files and tables
    Case("decompression_bomb", S, _bomb, ("a0.png", "is refused", "exceeds limit", "replace or remove the file")),
    Case("csv_root_missing", S, lambda c: [*c.csv_dataset(), f"dataset.root={c.root}/nowhere"],
         (f"{'nowhere'} does not exist", "dataset.root=")),
    Case("csv_file_missing", S, lambda c: [*c.csv_dataset(), "dataset.csv=nope.csv"], ("nope.csv does not exist",)),
    Case("csv_no_label_column", S, lambda c: _csv_text(c, "image,diagnosis\nimg/a0.png,a\n"),
         ("no column 'label' for labels", "set dataset.label_col=<column>; columns found: ['image', 'diagnosis']")),
    Case("csv_no_image_column", S, lambda c: _csv_text(c, "file,label\nimg/a0.png,a\n"), ("no column 'image' for image paths",)),
    Case("csv_empty_label", S, lambda c: _csv_text(c, "image,label\nimg/a0.png,a\nimg/a1.png,\n"), ("row 3 has an empty label",)),
    Case("csv_empty_image_path", S, lambda c: _csv_text(c, "image,label\n,a\n"), ("row 2: empty image path",)),
    Case("csv_absolute_path", S, lambda c: c.csv_dataset([("/etc/passwd", "a"), *c.good_rows]),
         ("row 2: absolute image path '/etc/passwd' refused", "dataset.allow_absolute_paths=true")),
    Case("csv_path_escapes_root", S, lambda c: c.csv_dataset([("../../x.png", "a"), *c.good_rows]),
         ("row 2: image path '../../x.png' points outside the dataset root",)),
    Case("csv_class_too_small", S, lambda c: c.csv_dataset(c.good_rows[:14]), ("class 'c' has 2 samples; at least 3",)),
    Case("csv_one_class", S, lambda c: c.csv_dataset([r for r in c.good_rows if r[1] == "a"]), ("has a single class",)),
    Case("csv_missing_image", S, lambda c: c.csv_dataset([*c.good_rows, ("img/gone.png", "a")]), ("gone.png",)),
    Case("split_fractions", S, lambda c: [*c.csv_dataset(), "dataset.split.val=0.7", "dataset.split.test=0.5"],
         ("val=0.7, test=0.5 must be in (0, 1) with val + test < 1",)),
    # weights
    Case("weights_text_file", S, lambda c: _weights(c, b"not weights at all\n"),
         ("weights.pth is not a PyTorch state dict", "expected a state dict of tensors")),
    Case("weights_empty_file", S, lambda c: _weights(c, b""), ("weights.pth is not a PyTorch state dict",)),
    Case("weights_a_list", S, lambda c: _weights(c, lambda p: torch.save([torch.zeros(2)], p)),
         ("weights.pth holds a list, not a state dict of tensors",)),
    Case("weights_empty_dict", S, lambda c: _weights(c, lambda p: torch.save({}, p)), ("holds an empty dict",)),
    Case("weights_bad_safetensors", S, lambda c: _weights(c, b"\x10\x00garbage", ".safetensors"),
         ("weights.safetensors is not a readable safetensors file",)),
    Case("weights_other_architecture", S, lambda c: _weights(c, lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p)),
         ("weights.pth: 1 tensors, the model has", "positional mapping impossible")),
    Case("weights_missing_file", S, lambda c: _synthetic(c, f"model.weights={c.root}/none.pth"), ("none.pth is not a file",)),
    Case("hub_model_offline", S, lambda c: _synthetic(c, "model=resnet18"),
         ("no pretrained weights available for model 'resnet18'", "model.weights=/path/to/resnet18.pth")),
    Case("unknown_architecture", S, lambda c: _synthetic(c, "model.arch=resnet1800"), ("timm has no architecture 'resnet1800'",)),
    # tracking store
    Case("tracking_not_a_uri", S, lambda c: _synthetic(c, "tracking.uri=not-a-uri"), ("tracking.uri='not-a-uri' is not a tracking URI",)),
    Case("tracking_mistyped_sqlite_path", S, lambda c: _synthetic(c, f"tracking.uri=sqlite:///{c.root}/no/such/dir/mlflow.db"),
         (f"the folder {'{root}'}/no/such/dir of the tracking store mlflow.db does not exist", "tracking.create=true")),
    Case("tracking_sqlite_two_slashes", S, lambda c: _synthetic(c, "tracking.uri=sqlite://mlflow.db"), ("three slashes",)),
    Case("tracking_store_is_a_folder", S, lambda c: _synthetic(c, f"tracking.uri=sqlite:///{c.root}/mlruns"),
         ("is a folder, not a SQLite file",)),
    Case("tracking_read_only_store", S, _ro_store, ("/ro/mlruns is not writable: read-only file system",)),
    Case("tracking_read_only_new_store", S, _ro_new_store, ("/ro/mlruns is not writable: read-only file system",)),
    Case("tracking_retries_not_a_number", S, lambda c: _synthetic(c), ("MEDXFER_TRACKING_RETRIES must be a whole number",),
         env={"MEDXFER_TRACKING_RETRIES": "many"}),
    # options
    Case("input_size_negative", S, lambda c: _synthetic(c, "preprocess.input_size=-5"),
         ("preprocess.input_size=-5; expected a whole number of pixels from 1 to 4096",)),
    Case("input_size_huge", S, lambda c: _synthetic(c, "preprocess.input_size=224000"), ("preprocess.input_size=224000",)),
    Case("resize_below_crop", S, lambda c: _synthetic(c, "preprocess.resize=32"),
         ("preprocess.resize=32 is smaller than preprocess.input_size=64",)),
    Case("interpolation_unknown", S, lambda c: _synthetic(c, "preprocess.interpolation=cubic"), ("preprocess.interpolation='cubic'",)),
    Case("std_zero", S, lambda c: _synthetic(c, "preprocess.std=[0,1,1]"), ("every channel's std must be positive",)),
    Case("mean_one_number", S, lambda c: _synthetic(c, "preprocess.mean=[0.5]"), ("preprocess.mean=[0.5]; expected 3 numbers",)),
    Case("score_name_unknown", S, lambda c: _synthetic(c, "score.names=[logmee]"), ("unknown score(s) ['logmee'] in score.names",)),
    Case("score_option_unknown", S, lambda c: _synthetic(c, "score.names=[logme]", "+score.options.logme.alpha=1"),
         ("score.options.logme: unknown option(s) ['alpha']",)),
    Case("licence_opt_in", S, lambda c: _synthetic(c, "model=vgg16_bn_craft"), ("non-commercial use only", "zoo.allow_noncommercial=true")),
    Case("finetune_keep_unknown", "finetune", lambda c: [f"paths.data_dir={c.data}", *TINY[:6], "finetune.keep=some"],
         ("finetune.keep='some'",)),
    Case("finetune_epochs_zero", "finetune", lambda c: [f"paths.data_dir={c.data}", *TINY[:6], "finetune.max_epochs=0"],
         ("finetune.max_epochs=0; expected an integer >= 1",)),
    Case("finetune_trial_negative", "finetune", lambda c: [f"paths.data_dir={c.data}", *TINY[:6], "trial=-1"],
         ("trial=-1: trials are numbered from 0",)),
]


def _stage(config: str):
    if config == "score":
        from medxfer.stages.score import run_score

        return run_score
    from medxfer.stages.finetune import run_finetune

    return run_finetune


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_with_a_message(case: Case, ctx: Ctx, capsys, monkeypatch):
    try:
        for key, value in (case.env or {}).items():
            monkeypatch.setenv(key, value)
        before = _runs(ctx.root / "mlruns" / "mlflow.db")
        cfg = compose_config(case.config, case.overrides(ctx))
        capsys.readouterr()
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as stopped:
            reports_errors(_stage(case.config))(cfg)
        elapsed = time.perf_counter() - t0
        err = capsys.readouterr().err
    finally:
        for undo in ctx.cleanup:
            undo()
    assert stopped.value.code == 2, err
    assert elapsed < IN_PROCESS_LIMIT_S
    assert "Traceback" not in err
    assert err.splitlines()[0].startswith("medxfer") and ": error: " in err.splitlines()[0]
    for text in case.expect:
        assert text.replace("{root}", str(ctx.root)) in err, err
    after = _runs(ctx.root / "mlruns" / "mlflow.db")
    assert not [r for r, v in after.items() if v[0] == "RUNNING"]
    assert {r: after[r] for r in before} == before  # earlier runs unchanged
    if case.id == "decompression_bomb":  # the run that read the image failed, naming the file in its error tag
        (failed,) = [v for r, v in after.items() if r not in before]
        assert failed[0] == "FAILED" and "a0.png" in failed[3] and "is refused" in failed[3]


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30


# --- the real console scripts ------------------------------------------------------------------------------------

def _cli(ctx: Ctx, script: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {**os.environ, "MEDXFER_ROOT": str(ctx.root), "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    if not env or "HYDRA_FULL_ERROR" not in env:
        full_env.pop("HYDRA_FULL_ERROR", None)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / script), *args, f"hydra.run.dir={ctx.root}/outputs/run"], cwd=ctx.root,
                          env=full_env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0


# each start costs 20-40 s on a loaded machine (imports), so one runs in the fast suite and the others are slow
SUBPROCESS_CASES = [
    pytest.param("medxfer-score", lambda c: _synthetic(c, "tracking.uri=not-a-uri"),
                 "tracking.uri='not-a-uri' is not a tracking URI", id="score_not_a_uri"),
    pytest.param("medxfer-score", lambda c: c.csv_dataset(c.good_rows + c.good_rows), "listed more than once",
                 id="score_duplicates", marks=pytest.mark.slow),
    pytest.param("medxfer-finetune", lambda c: ["preprocess.input_size=-5"], "preprocess.input_size=-5",
                 id="finetune_input_size", marks=pytest.mark.slow),
    pytest.param("medxfer-score", lambda c: _synthetic(c, f"tracking.uri=sqlite:///{c.root}/no/such/dir/mlflow.db"),
                 "does not exist", id="score_mistyped_store", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("script,overrides,expect", SUBPROCESS_CASES)
def test_console_script_prints_the_message_without_a_traceback(script, overrides, expect, ctx):
    before = _runs(ctx.root / "mlruns" / "mlflow.db")
    proc, elapsed = _cli(ctx, script, *overrides(ctx))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < SUBPROCESS_LIMIT_S
    assert "Traceback" not in proc.stderr and expect in proc.stderr, proc.stderr[-3000:]
    assert f"{script}: error: " in proc.stderr
    after = _runs(ctx.root / "mlruns" / "mlflow.db")
    assert {r: after[r] for r in before} == before and "RUNNING" not in {v[0] for v in after.values()}
    assert not (ctx.root / "no").exists()


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(ctx):
    proc, _ = _cli(ctx, "medxfer-score", *_synthetic(ctx, "preprocess.input_size=-5"), env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: preprocess.input_size=-5" in proc.stderr


def test_an_unexpected_exception_keeps_its_traceback(capsys):
    def broken(cfg):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        reports_errors(broken)(None)
