"""The cells the stages run are the study manifest's, and existing cell ids do not move.

The contract is checked without running anything: the stages are called as the study calls them, with a tracker
that reports every cell FINISHED, so each stage derives its cells, asks for them and stops there (no model is
built, no image decoded, no run written). The ids they asked for must be the manifest's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

import medxfer.tracking as tracking
from medxfer.config import reference_dir
from medxfer.workflows.grid import StudyGrid, compose_config, study_manifest

from conftest import write_stand_in_images


class AskedCells:
    """Stands in for the tracker's ``finished_runs_of``: every cell asked for is FINISHED; remembers the ids."""

    def __init__(self):
        self.ids: list[str] = []

    def __call__(self, experiment_id, cells):
        self.ids += list(cells)
        return {cell: SimpleNamespace(info=SimpleNamespace(run_id=f"run-{cell}"), data=SimpleNamespace(metrics={}))
                for cell in cells}


@pytest.fixture
def asked(monkeypatch) -> AskedCells:
    """The tracker reports every cell FINISHED, and registry weights are named, never fetched: a registry
    model's identity is the digests pinned in its config, not the converted file."""
    import medxfer.models.fetch as fetch

    recorder = AskedCells()
    monkeypatch.setattr(tracking, "finished_runs_of", recorder)
    monkeypatch.setattr(tracking, "reap_dead_runs", lambda experiment_id: None)
    monkeypatch.setattr(fetch, "fetch_source", lambda spec, cache_dir=None, **k: SimpleNamespace(
        weights=f"/nowhere/{spec.name}.safetensors", source=f"/nowhere/{spec.name}"))
    return recorder


def _study(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config("study", list(overrides)), resolve=True)


def test_the_default_studys_stages_run_exactly_its_manifests_cells(project, shared_data_dir, asked):
    """Every score and fine-tune cell of the default study (12 models x 3 datasets, 2 seeds): the ids the stages
    derive, called by the study workflow itself, are the manifest's, and no manifest cell is left out."""
    from medxfer.workflows.study import run_study

    cfg = compose_config("study", [f"paths.data_dir={shared_data_dir}", "analyze.enabled=false"])
    t0 = time.perf_counter()
    report = run_study(cfg)
    stages_s = time.perf_counter() - t0
    assert report.counts["score"]["ran"] == report.counts["finetune"]["ran"] == 0
    manifest = study_manifest(OmegaConf.to_container(cfg, resolve=True))
    print(f"default study: stages derived {len(asked.ids)} cells in {stages_s:.1f}s")
    assert len(manifest.score) == 72 and len(manifest.finetune) == 72
    assert sorted(asked.ids) == sorted(manifest.ids("score") + manifest.ids("finetune"))


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> Path:
    """Every image the paper's split files name, as a tiny file at its path (distinct bytes per file: identical
    files would be refused as duplicates). Only the ids matter here, not the pixels."""
    root = tmp_path_factory.mktemp("paper_data")

    def rows():
        for table in Path(reference_dir("chaves2023/splits")).rglob("*.csv"):
            with open(table, newline="") as fh:
                yield from (row["image"].lstrip("/") for row in csv.DictReader(fh))

    write_stand_in_images(root, rows())
    return root


def test_the_paper_studys_stages_run_its_manifests_cells(project, paper_data, asked, monkeypatch):
    """experiment=paper (hub weights taken as reachable; the paper's split files over stand-in images), at two of
    its Halton points (the first and the last; each trial is derived alike): every score and fine-tune cell the
    stages derive, called as the study calls them, is the manifest's, and no manifest cell is left out."""
    import medxfer.models.zoo as zoo
    from medxfer.plans import Sources
    from medxfer.stages.finetune import run_finetune
    from medxfer.stages.score import run_score

    monkeypatch.setattr(zoo, "hub_available", lambda: True)
    c = _study("experiment=paper", f"paths.data_dir={paper_data}", "finetune.trials=[0,74]")
    grid = StudyGrid(c)
    manifest = grid.manifest()
    seeds = c["finetune"].get("seeds") or [0]
    assert len(manifest.score) == 2 * 30 and len(manifest.finetune) == 30 * 2 * len(seeds)
    sources = Sources(c["paths"]["cache_dir"])
    for m, d in grid.pairs:
        run_score(grid.score_config(m, d), sources=sources)
    for m, d, trial, seed in grid.trials:
        run_finetune(grid.trial_config(m, d, trial, seed), sources=sources)
    assert sorted(asked.ids) == sorted(manifest.ids("score") + manifest.ids("finetune"))


# --- ids pinned: a refactoring must not re-identify the runs of tracked studies ---------------------------------

#: Computed at 9a61e64 from the default study's grid over the synthetic data, with each table's content digest
#: standing in as its labels and file names: the synthetic images' bytes differ in their last bits between CPUs
#: (floating-point drawing), and a refactoring is what this guards against. The content digest has its own tests.
DEFAULT_MANIFEST_ID = "f38c3354c6966c34"
PINNED = {
    "densenet121_capricorn@synthetic_derm/ood": "8dc076f202eb4909",
    "densenet121_capricorn@synthetic_derm/train": "5742e1338d671759",
    "densenet121_capricorn@synthetic_histo/ood": "ceba82cc3e755a92",
    "densenet121_capricorn@synthetic_derm#trial1": "c7dee952cea2a361",
    "densenet121_capricorn@synthetic_derm#trial1.s1": "8156acc910f1f4ba",
}


def _names_digest(table, digests) -> str:
    h = hashlib.sha256(json.dumps(list(table.class_names)).encode())
    h.update(np.ascontiguousarray(table.labels, dtype=np.int64).tobytes())
    h.update("\n".join(Path(p).name for p in table.paths).encode())
    return h.hexdigest()


def test_the_default_studys_cell_ids_are_the_ones_tracked_studies_hold(project, shared_data_dir, monkeypatch):
    import medxfer.cells

    monkeypatch.setattr(medxfer.cells, "table_digest", _names_digest)
    manifest = study_manifest(_study(f"paths.data_dir={shared_data_dir}"))
    by_name = {cell.run_name: cell.id for cell in manifest.score + manifest.finetune}
    assert {name: by_name[name] for name in PINNED} == PINNED
    assert manifest.id == DEFAULT_MANIFEST_ID


def test_user_tags_cannot_rename_a_cell(score_cfg, project):
    """``tags={cell: x}`` on the command line: the run still carries its own cell id, so claims and the
    analysis find it; the user's other tags are kept."""
    import mlflow

    from medxfer.stages.score import run_score

    result = run_score(score_cfg("splits=[train]", "score=logme", "+tags.cell=x", "+tags.stage=y", "+tags.mine=z"))[0]
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["cell"] == result.cell != "x" and tags["stage"] == "score" and tags["mine"] == "z"

