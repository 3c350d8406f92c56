"""Shared fixtures: a composed Hydra config pointed at a temporary project folder, small enough for a CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from medxfer.config import config_dir

# Tiny, fast settings: few synthetic images, 64 px crops, no progress bars.
TINY = [
    "dataset.synthetic.n_per_class=12",
    "dataset.synthetic.image_size=48",
    "dataset.synthetic.progress=false",
    "dataset.ood.synthetic.progress=false",
    "dataset.ood.synthetic.n_per_class=6",
    "dataset.ood.synthetic.image_size=48",
    # 70/15/15, not the synthetic configs' 1/3 train, 1/2 test (sized for the default study's 600 images): with
    # 24 images that would leave 4 for training, fewer than N-LEEP's mixture needs
    "dataset.split.val=0.15",
    "dataset.split.test=0.15",
    "preprocess.input_size=64",
    "extract.progress=false",
]


def write_stand_in_images(root: Path, rel_paths) -> None:
    """A tiny 8x8 image at ``root / rel`` for each path: one encoded image per format (PNG, JPEG, TIFF by
    extension), followed by the path (decoders ignore trailing bytes) so that no two files are identical:
    identical files are refused as duplicates. For split files whose ids matter, not their pixels."""
    import io

    from PIL import Image

    blobs = {}
    for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".tif", "TIFF")):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (150, 90, 60)).save(buf, fmt)
        blobs[ext] = buf.getvalue()
    made = set()
    for rel in rel_paths:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(blobs[path.suffix.lower()] + b"\0" + rel.encode())


def png_width(path) -> int:
    """The width in pixels of the PNG at ``path`` (its IHDR chunk)."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(24)[16:20], "big")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the network: the hub counts as unavailable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _fresh_command_warnings():
    """Each test starts as a new command does: no medxfer warning seen yet (a command shows each form once,
    medxfer.cli._warnings.OncePerCommand, and an in-process command earlier in the session must not hide one)."""
    from medxfer.cli import _warnings

    _warnings._ONCE._seen.clear()
    yield


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project root (mlruns/, data/, .cache/) for one test; the synthetic data folder is shared."""
    monkeypatch.setenv("MEDXFER_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def zoo_cache() -> str:
    """The cache that holds fetched and converted zoo weights, shared across tests and runs (downloads are
    large): ``MEDXFER_CACHE_DIR``, else the checkout's ``.cache/medxfer``."""
    return os.environ.get("MEDXFER_CACHE_DIR") or str(Path(__file__).resolve().parents[1] / ".cache" / "medxfer")


#: The one setting that says where the real medical images are (README of ../shared/data); tests that need them
#: skip, saying so, when the folder is not there.
REAL_DATA_ENV = "MEDXFER_SHARED_DATA"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real medical images: ``$MEDXFER_SHARED_DATA``, else ``../shared/data`` beside the project
    root. Skips the test when it has no ``brain_tumor_kaggle/``."""
    root = Path(os.environ.get(REAL_DATA_ENV) or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    if not (root / "brain_tumor_kaggle").is_dir():
        pytest.skip(f"no real medical images at {root} (set {REAL_DATA_ENV}=/path/to/shared/data)")
    return root.resolve()


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """Synthetic images generated once per test session and reused (generation is deterministic)."""
    return tmp_path_factory.mktemp("data")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture
def score_cfg(project, shared_data_dir):
    """A factory: the score config with TINY settings plus ``overrides``."""

    def make(*overrides: str) -> DictConfig:
        return compose_config("score", [f"paths.data_dir={shared_data_dir}", *TINY, *overrides])

    return make


#: The study that analysis, rank and notebook tests read: real score and fine-tune runs on TINY data, written once
#: per session by the stages themselves (``tracked_study``). The zoo model joins when its converted weights are in
#: the zoo cache (``medxfer-zoo fetch models=[mobilenetv1_100_nudity]``); tests never download.
STUDY_LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
STUDY_ZOO_MODEL = "mobilenetv1_100_nudity"
STUDY_DATASETS = ("synthetic_derm", "synthetic_mri")
STUDY_SCORES = ("leep", "logme", "reg_hscore")  # plain hscore is the class count minus one when N << D: constant
STUDY_TRIALS = (1, 3)  # Halton points with lr 3.2e-3 and 1.8e-2: both move the weights within one epoch
STUDY_FINETUNE = ["finetune=smoke", "finetune.max_epochs=1", "finetune.batch_size=8", "finetune.progress=false",
                  "finetune.num_workers=0"]
# TINY's images and crops, with 40 per class instead of 12: a test split of a dozen images, so that fine-tuned
# accuracies differ between models (with 3 test images every model scores 0.5 and no tau is defined)
STUDY_DATA = [o.replace("dataset.synthetic.n_per_class=12", "dataset.synthetic.n_per_class=40")
              for o in TINY if not o.startswith("extract.")]
# The grid's stage overrides (score.overrides, finetune.overrides of a study config): the fixture composes each
# stage config from them as the study manifest does, so the analysis reads exactly these cells.
STUDY_SCORE_OVERRIDES = [*STUDY_DATA, "extract.progress=false", "extract.num_workers=0",
                         f"score.names=[{','.join(STUDY_SCORES)}]"]
STUDY_FINETUNE_OVERRIDES = [*STUDY_DATA, *STUDY_FINETUNE, f"ood_scores=[{','.join(STUDY_SCORES)}]"]


def _quoted(items) -> str:
    return ",".join(f"'{i}'" for i in items)


@dataclass(frozen=True)
class TrackedStudy:
    """Where the session's real study lives and how its stages were composed.

    ``root`` holds ``mlruns/`` (``mlflow.db`` and ``artifacts/``); ``data_dir`` and ``cache_dir`` (features,
    file digests, and a link to the zoo cache) are the stages' ``paths.data_dir`` and ``paths.cache_dir``."""

    root: Path
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    scores: tuple[str, ...]
    trials: tuple[int, ...]
    data_dir: Path
    cache_dir: Path
    seconds: float

    def grid_overrides(self, models=None, datasets=None) -> list[str]:
        """The study config's grid (models, datasets, stage overrides, trials) and paths: what the manifest of
        ``medxfer-analyze`` (and ``medxfer-rank``'s tau) is built from. ``models``/``datasets`` replace the study's."""
        return [f"models=[{','.join(models or self.models)}]", f"datasets=[{','.join(datasets or self.datasets)}]",
                f"score.overrides=[{_quoted(STUDY_SCORE_OVERRIDES)}]",
                f"finetune.trials=[{','.join(map(str, self.trials))}]", "finetune.seeds=[0]",
                f"finetune.overrides=[{_quoted(STUDY_FINETUNE_OVERRIDES)}]",
                f"paths.data_dir={self.data_dir}", f"paths.cache_dir={self.cache_dir}"]

    def rank_study_overrides(self) -> str:
        """The ``study_overrides`` option that points ``medxfer-rank``'s evidence (and ``medxfer-evidence``) at this
        study's grid."""
        return "study_overrides=[" + ",".join(f'"{o}"' for o in self.grid_overrides()) + "]"

    def analyze_config(self, *overrides: str, models=None, datasets=None) -> DictConfig:
        """The analyze config of this study (or of its ``models`` x ``datasets``) plus ``overrides``."""
        return compose_config("analyze", [*self.grid_overrides(models, datasets), *overrides])


def _zoo_model_cached(zoo_cache: str) -> bool:
    """Whether the zoo model's converted weights are in the zoo cache (no download needed)."""
    from medxfer.models.fetch import zoo_dir

    return any((zoo_dir(zoo_cache) / "converted").glob(f"{STUDY_ZOO_MODEL}-*.safetensors"))


@pytest.fixture(scope="session")
def tracked_study(tmp_path_factory, zoo_cache) -> TrackedStudy:
    """A small study written by the real stages, once per session: ``run_score`` (both splits) and
    ``run_finetune`` (two trials, one epoch) for every model of ``STUDY_LITE_MODELS`` (plus the zoo model when
    cached) on both ``STUDY_DATASETS``. Read it in place; copy it with :func:`copy_study` before writing to it."""
    import time

    from medxfer.stages.finetune import run_finetune
    from medxfer.stages.score import run_score

    root = tmp_path_factory.mktemp("study")
    cache = root / "cache"
    cache.mkdir()
    # features and checkpoints stay in this session's folder; converted zoo weights are shared, never fetched here
    (cache / "zoo").symlink_to(Path(zoo_cache) / "zoo", target_is_directory=True)
    models = STUDY_LITE_MODELS + ((STUDY_ZOO_MODEL,) if _zoo_model_cached(zoo_cache) else ())
    common = [f"paths.root_dir={root}", f"paths.data_dir={root / 'data'}", f"paths.cache_dir={cache}",
              f"tracking.uri=sqlite:///{root}/mlruns/mlflow.db"]
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:  # session scope: the function-scoped _offline has not run yet
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for d in STUDY_DATASETS:
            for m in models:
                run_score(compose_config("score", [f"model={m}", f"dataset={d}", *common, *STUDY_SCORE_OVERRIDES]))
                for t in STUDY_TRIALS:
                    run_finetune(compose_config("finetune", [f"model={m}", f"dataset={d}", f"trial={t}", *common,
                                                             *STUDY_FINETUNE_OVERRIDES, "finetune.seed=0"]))
    seconds = time.perf_counter() - t0
    print(f"tracked_study: {len(models)} models x {len(STUDY_DATASETS)} datasets in {seconds:.0f} s")
    return TrackedStudy(root, models, STUDY_DATASETS, STUDY_SCORES, STUDY_TRIALS, root / "data", cache, seconds)


def copy_study(study: TrackedStudy, dest: Path) -> Path:
    """Copy the study's store (``mlruns/``: database and artifacts) into ``dest/mlruns`` for a test that writes to
    it, and point the copied experiments and runs at the copied artifacts: MLflow stores absolute artifact URIs,
    and new runs of a copied experiment must not write into the session's store. Returns ``dest``."""
    import shutil
    import sqlite3

    src = study.root / "mlruns"
    shutil.copytree(src, dest / "mlruns")
    old, new = src.resolve().as_uri(), (dest / "mlruns").resolve().as_uri()
    con = sqlite3.connect(dest / "mlruns" / "mlflow.db")
    with con:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
        stale = con.execute("SELECT artifact_uri FROM runs WHERE artifact_uri LIKE ?", (old + "%",)).fetchall()
        copied = con.execute("SELECT artifact_uri FROM runs WHERE artifact_uri LIKE ?", (new + "/%",)).fetchall()
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    assert not stale and len(copied) == n_runs > 0, f"artifact URIs of the copied store not under {new}"
    return dest


@pytest.fixture
def study_project(project, tracked_study) -> Path:
    """The test's project folder holding a copy of the session's study, ready to be analysed and written to."""
    return copy_study(tracked_study, project)
