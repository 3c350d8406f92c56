"""medxfer as a practitioner installs it: a wheel in a fresh virtual environment, run from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import mlflow
import pytest

from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "medxfer"


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so that the checkout gets no build/ or egg-info folders."""
    src = tmp_path / "source"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("src", "conf"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           ".", "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("medxfer-*.whl")
    return wheel


def _venv_with_wheel(tmp_path: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel; its dependencies (torch is 5 GB) come from this environment's
    site-packages through a .pth line, which adds the folder without running its .pth files, so the
    checkout's editable install of medxfer is not seen."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_medxfer_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDXFER_ROOT", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def test_wheel_ships_every_config_and_reference_file(tmp_path):
    """package-data in pyproject.toml covers what ``config_dir()`` and ``reference_dir()`` read: the checkout's
    top-level conf/ as medxfer/conf, src/medxfer/reference as medxfer/reference."""
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"conf": REPO / "conf", "reference": PACKAGE / "reference"}
    wanted = {f"medxfer/{folder}/{p.relative_to(root).as_posix()}"
              for folder, root in shipped.items() for p in root.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted and not wanted - names, f"missing from the wheel: {sorted(wanted - names)[:20]}"


@pytest.mark.slow  # builds a wheel, makes a venv and scores one cell: about a minute
def test_installed_wheel_scores_a_cell_from_an_empty_folder(tmp_path):
    venv = _venv_with_wheel(tmp_path, _build_wheel(tmp_path))
    work = tmp_path / "empty"
    work.mkdir()
    env = _clean_env()

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import medxfer, medxfer.config; print(medxfer.__file__); print(medxfer.config.config_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    module_file, conf = where.stdout.split()
    assert Path(module_file).is_relative_to(venv) and Path(conf).is_relative_to(venv), where.stdout
    assert not Path(module_file).is_relative_to(REPO)

    proc = subprocess.run([str(venv / "bin" / "medxfer-score"), "model=efficientnet_lite0", "dataset=synthetic_derm",
                           *TINY],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # everything under the working directory: the store, the generated data, Hydra's outputs, the caches
    assert (work / "mlruns" / "mlflow.db").is_file() and (work / "data" / "synthetic").is_dir()
    assert (work / "outputs").is_dir() and (work / ".cache" / "medxfer").is_dir()
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/score"])
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert runs.filter(like="metrics.score/").notna().all().all()
