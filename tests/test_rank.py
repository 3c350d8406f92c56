"""medxfer-rank: the study's models ranked for a user's folder or CSV by the best validated ranker, with rank
intervals, a shortlist and a report; the evidence from the tracked study or the shipped table; bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from medxfer.analysis import apply_pooling, correlate, fit_linear_pooling
from medxfer.analysis.evidence import choose_ranker
from medxfer.results import study_tables
from medxfer.cli.rank import rank_inputs
from medxfer.config import config_dir
from medxfer.data.tables import DataError
from medxfer.errors import ConfigError
from medxfer.stages.rank import RankError, run_rank, shipped_evidence
from medxfer.workflows.grid import study_manifest

BIN = Path(sys.executable).parent
CONF = Path(config_dir())
LITE = ["efficientnet_lite0", "efficientnet_lite1"]
QUIET = ["extract.progress=false", "rank.bootstrap.n=8"]


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory) -> Path:
    """A user's dataset: PNG images and labels.csv (image, label, group), 48 px, 24 images."""
    from medxfer.data.synthetic import generate_synthetic

    return generate_synthetic("synthetic_derm", tmp_path_factory.mktemp("mine") / "lesions", n_per_class=12,
                              image_size=48, progress=False)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A user's folder <class>/<image>: 2 classes of 10 PNG images."""
    root = tmp_path_factory.mktemp("folder") / "xrays"
    rng = np.random.default_rng(0)
    for c, scale in (("normal", 0.4), ("opacity", 1.0)):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((40, 40, 3)) * 255 * scale).astype("uint8")).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the in-process tests, so that only the first one runs the models."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def rank_cfg(project, labels_csv, feature_cache):
    def make(*overrides: str, dataset: Path = labels_csv):
        return compose_config("rank", [f"dataset.path={dataset}", f"models=[{','.join(LITE)}]",
                                       f"paths.cache_dir={feature_cache}", *QUIET, *overrides])

    return make


def rank(cfg):
    return run_rank(cfg, rank_inputs(cfg))


def _cli(args, root, timeout=600):
    env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "medxfer.cli.rank", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- defaults ---------------------------------------------------------------------------------------------------

def test_defaults_are_the_default_studys_models_its_preprocessing_and_the_best_ranker(project, labels_csv):
    cfg = compose_config("rank", [f"dataset.path={labels_csv}"])
    inputs = rank_inputs(cfg)
    grid = yaml.safe_load((CONF / "grid" / "default.yaml").read_text())
    assert list(inputs.models) == grid["models"]  # every model of the default study, not three of one family
    assert len(inputs.models) == 12
    assert inputs.study_preprocess == yaml.safe_load((CONF / "preprocess" / "smoke.yaml").read_text())
    assert cfg.score.ranker == "auto" and cfg.evidence == "auto"
    assert "preprocess" not in cfg or cfg.preprocess is None  # so the stage takes the study's


# --- the acceptance: defaults, a tiny folder, the tracked study or the shipped evidence ----------------------------

def _expected_choice(corr: pd.DataFrame) -> str:
    """The ranker the issue asks for: the best pooled tau; the static ranker when the best score's interval does
    not lie above the static ranker's tau."""
    pooled = corr[(corr["dataset"] == "ALL") & corr["tau"].notna()].set_index("score")
    best = pooled["tau"].idxmax()
    if best in ("static_rank", "n_params") or "static_rank" not in pooled.index:
        return best
    return best if pooled.loc[best, "tau_lo"] > pooled.loc["static_rank", "tau"] else "static_rank"


def test_defaults_rank_every_study_model_by_the_tracked_studys_best_ranker(study_project, tracked_study, image_folder):
    from medxfer.workflows.study import analyze_study

    analysis = analyze_study(tracked_study.analyze_config("bootstrap.n=200"))
    expected = _expected_choice(analysis.iid)
    out = _cli([f"dataset.path={image_folder}", tracked_study.rank_study_overrides(), "extract.progress=false",
                "rank.bootstrap.n=8"], study_project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert f"ranked by {expected}:" in text
    assert f"analysis run {analysis.run_id[:8]}" in text and "tracked study 'default'" in text
    header = next(line for line in text.splitlines() if line.startswith("rank "))
    assert "rank 95% interval" in header and "P(first)" in header and "fine-tune" in header
    rows = re.findall(r"^\s*(\d+)\s+(\S+)\s+(-?[\d.e+-]+)\s+(\d+)-(\d+)\s+([\d.]+)", text, flags=re.M)
    assert sorted(m for _, m, *_ in rows) == sorted(tracked_study.models)  # every model of the study
    for r, _, _, lo, hi, _ in rows:
        assert int(lo) <= int(r) <= int(hi)
    assert re.search(r"^fine-tune these \d+: ", text, flags=re.M)

    folder = study_project / "outputs" / "rank" / "xrays"
    decision = json.loads((folder / "rank.json").read_text())
    assert decision["ranker"] == expected and len(decision["models"]) == len(tracked_study.models)
    row = analysis.iid[(analysis.iid["dataset"] == "ALL") & (analysis.iid["score"] == expected)].iloc[0]
    assert (decision["tau"], decision["tau_lo"], decision["tau_hi"]) == pytest.approx((row["tau"], row["tau_lo"],
                                                                                      row["tau_hi"]))
    assert decision["expected_regret"] == pytest.approx(row["regret"])
    assert 1 <= len(decision["shortlist"]) <= len(tracked_study.models)
    report = (folder / "report.md").read_text()
    assert "Fine-tune these" in report and "rank_intervals.png" in report and expected in report
    assert (folder / "rank_intervals.png").stat().st_size > 1000

    mlflow.set_tracking_uri(f"sqlite:///{study_project}/mlruns/mlflow.db")
    run = mlflow.search_runs(experiment_names=["default/rank"]).iloc[0]
    assert (run["status"], run["tags.score"], run["tags.evidence"]) == ("FINISHED", expected, "tracked")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "report")}
    assert {"report/report.md", "report/rank_intervals.png", "report/rank.json"} <= artifacts


def test_without_a_tracked_study_the_shipped_evidence_ranks_and_says_so(project, image_folder):
    shipped = shipped_evidence()
    usable = {r for r, e in shipped.rankers.items()
              if e.kind != "baseline" or len(set(shipped.baseline_values.get(r, {})) & set(LITE)) >= 2}
    expected = choose_ranker(shipped, {u for u in usable if u != "ens_linear" or shipped.linear_weights}).ranker.ranker
    out = _cli([f"dataset.path={image_folder}", f"models=[{','.join(LITE)}]", "format=json", "extract.progress=false",
                "rank.bootstrap.n=8"], project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "evidence: the evidence shipped with medxfer" in out.stdout
    decision = json.loads(out.stdout[out.stdout.index("\n{") + 1:])  # format=json: the answer closes the output
    assert decision["evidence"].startswith("the evidence shipped with medxfer")
    assert decision["ranker"] == expected and decision["synthetic_evidence"] == shipped.synthetic
    assert [m["model"] for m in decision["models"]] and {m["model"] for m in decision["models"]} == set(LITE)
    assert all(m["rank_lo"] <= m["rank"] <= m["rank_hi"] for m in decision["models"])
    assert (project / "outputs" / "rank" / "xrays" / "report.md").is_file()


def test_the_shipped_evidence_is_regenerated_from_a_study_and_labelled():
    shipped = shipped_evidence()
    assert shipped.shipped and shipped.medxfer_version and shipped.models and shipped.datasets
    assert shipped.synthetic == all(d.startswith("synthetic") for d in shipped.datasets)
    assert shipped.protocol["preprocess"] and "score_overrides" in shipped.protocol
    assert "analysis run" in shipped.source  # written by medxfer-evidence from an analysis run, not by hand
    for row in shipped.rankers.values():
        assert row.n_models >= 2 and row.n_datasets >= 1
        assert row.kind in ("score", "ensemble", "baseline")
        if math.isfinite(row.tau):
            assert row.tau_lo <= row.tau <= row.tau_hi


def test_medxfer_evidence_writes_what_rank_reads(study_project, tracked_study, tmp_path):
    from medxfer.analysis.evidence import read_evidence
    from medxfer.cli.evidence import write_evidence
    from medxfer.workflows.study import analyze_study

    analysis = analyze_study(tracked_study.analyze_config("bootstrap.n=50"))
    cfg = compose_config("evidence", [tracked_study.rank_study_overrides(), f"output={tmp_path / 'evidence.json'}"])
    evidence = read_evidence(write_evidence(cfg))
    pooled = analysis.iid[analysis.iid["dataset"] == "ALL"].set_index("score")
    assert set(evidence.rankers) == set(pooled.index)
    for name, row in evidence.rankers.items():
        assert row.tau == pytest.approx(pooled.loc[name, "tau"], nan_ok=True)
    assert set(evidence.models) == set(tracked_study.models) and set(evidence.datasets) == set(tracked_study.datasets)
    assert evidence.synthetic and evidence.protocol["preprocess"]["input_size"] == 64
    assert set(evidence.baseline_values["static_rank"]) == set(tracked_study.models)


# --- rankers ----------------------------------------------------------------------------------------------------

def test_ens_rank_and_ens_z_combine_the_scores_of_each_model(rank_cfg, project):
    scores = ["logme", "leep", "nce"]
    ens_rank = rank(rank_cfg("score=ens_rank", f"score.names=[{','.join(scores)}]"))
    table = ens_rank.table.set_index("model")
    parts = table[[f"score/{s}" for s in scores]]
    np.testing.assert_allclose(table["value"], parts.rank(method="average").mean(axis=1))
    assert list(ens_rank.table["rank"]) == sorted(ens_rank.table["rank"])  # best first
    assert (ens_rank.table["rank_lo"] <= ens_rank.table["rank"]).all()
    assert (ens_rank.table["rank"] <= ens_rank.table["rank_hi"]).all()
    assert ens_rank.evidence is None  # the shipped evidence has no ensemble of these three
    assert "no evidence for ens_rank" in " ".join(ens_rank.notes)

    ens_z = rank(rank_cfg("score=ens_z", f"score.names=[{','.join(scores)}]"))
    table = ens_z.table.set_index("model")
    parts = table[[f"score/{s}" for s in scores]]
    np.testing.assert_allclose(table["value"], ((parts - parts.mean()) / parts.std(ddof=0)).mean(axis=1))
    assert all(ens_z.cached.values())  # the first ranking extracted the features
    with pytest.raises(RankError, match="Run the study"):
        rank(rank_cfg("score=ens_linear", "evidence=shipped"))


def test_features_of_a_cell_scored_by_medxfer_score_are_reused(rank_cfg, project, labels_csv, monkeypatch):
    import medxfer.models.features as features
    from medxfer.stages.score import run_score

    cache = project / "fresh-cache"
    scored = run_score(compose_config("score", [
        # rank names a CSV dataset after its folder; the feature cache files features under the dataset's name
        "model=efficientnet_lite0", "dataset=csv", f"dataset.root={labels_csv.parent}", "dataset.group_col=group",
        f"dataset.name={labels_csv.parent.name}",
        "preprocess=smoke", "score=logme", "splits=[train]", f"paths.cache_dir={cache}", "extract.progress=false"]))

    # lite0's features come from the score stage's cache; lite1's are extracted: one forward pass in all
    calls = []
    extract = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda model, table, *a, **k: calls.append(1) or
                        extract(model, table, *a, **k))
    result = rank(rank_cfg("score=logme", f"paths.cache_dir={cache}"))
    assert result.cached == {"efficientnet_lite0": True, "efficientnet_lite1": False} and len(calls) == 1
    value = result.table.set_index("model").loc["efficientnet_lite0", "value"]
    assert value == scored[0].scores["logme"]  # both score on one thread: bit-identical


def test_another_folder_with_the_same_file_names_and_labels_is_not_read_from_the_cache(rank_cfg, project, labels_csv,
                                                                                        tmp_path):
    """The images themselves (path, size, mtime) key the feature cache, not the file names."""
    import shutil

    from PIL import ImageOps

    copy = tmp_path / "lesions"
    shutil.copytree(labels_csv.parent, copy)
    for png in copy.rglob("*.png"):
        ImageOps.invert(Image.open(png).convert("RGB")).save(png)
    cache = project / "shared-cache"
    first = rank(rank_cfg("score=logme", f"paths.cache_dir={cache}"))
    second = rank(rank_cfg("score=logme", f"paths.cache_dir={cache}", dataset=copy / labels_csv.name))
    assert second.cached == {m: False for m in LITE}
    assert not np.allclose(second.table.sort_values("model")["value"], first.table.sort_values("model")["value"])
    again = rank(rank_cfg("score=logme", f"paths.cache_dir={cache}", dataset=copy / labels_csv.name))
    assert again.cached == {m: True for m in LITE}


def test_tau_comes_from_the_tracked_study(rank_cfg, study_project, tracked_study):
    from medxfer.workflows.study import analyze_study

    grid = [tracked_study.rank_study_overrides()]
    # no analysis run yet: computed from the study's score and fine-tune runs
    result = rank(rank_cfg("score=logme", *grid))
    c = OmegaConf.to_container(tracked_study.analyze_config(), resolve=True)
    study = study_tables(c["study"], study_manifest(c)).iid
    expected = correlate(study[study["score"] == "logme"]).set_index(["dataset", "score"]).loc[("ALL", "logme")]
    tau = result.evidence
    assert (tau.tau, tau.tau_lo, tau.tau_hi) == pytest.approx((expected["tau"], expected["tau_lo"], expected["tau_hi"]))
    assert (tau.n_models, tau.n_datasets) == (len(tracked_study.models), len(tracked_study.datasets))
    assert "computed from its score and fine-tune runs" in result.evidence_source
    assert f"{tau.tau:.2f} [{tau.tau_lo:.2f}, {tau.tau_hi:.2f}]" in result.report()

    # ens_linear: weights fitted on the study, applied to the models ranked here
    pair = ["logme", "reg_hscore"]
    linear = rank(rank_cfg("score=ens_linear", f"score.names=[{','.join(pair)}]", *grid))
    weights = fit_linear_pooling(study, pair, alpha=1e-3)
    long = pd.DataFrame([{"dataset": "ranked", "model": row["model"], "score": s, "value": row[f"score/{s}"]}
                         for _, row in linear.table.iterrows() for s in pair])
    pooled = apply_pooling(long, weights).set_index("model")["value"]
    np.testing.assert_allclose(linear.table.set_index("model")["value"], pooled.reindex(linear.table["model"]))
    assert linear.evidence is not None

    # with an analysis run, its tau and interval are the ones shown
    analysis = analyze_study(tracked_study.analyze_config("bootstrap.n=50"))
    logged = analysis.iid.set_index(["dataset", "score"])
    every = ",".join(tracked_study.scores)  # the analysis' ensembles combine every score of the study
    for score, extra in (("logme", []), ("ens_rank", [f"score.names=[{every}]"])):
        result = rank(rank_cfg(f"score={score}", *extra, *grid))
        assert result.evidence_source.startswith("tracked study 'default' (analysis run " + analysis.run_id[:8])
        row = logged.loc[("ALL", score)]
        tau = result.evidence
        assert (tau.tau, tau.tau_lo, tau.tau_hi) == pytest.approx((row["tau"], row["tau_lo"], row["tau_hi"]))
    # an ensemble of other scores than the analysis' is computed from the runs instead
    other = rank(rank_cfg("score=ens_rank", "score.names=[logme]", *grid))
    assert "computed" in other.evidence_source


def test_the_static_ranker_ranks_without_looking_at_the_images(rank_cfg, project, monkeypatch):
    import medxfer.stages.rank as stage

    monkeypatch.setattr(stage, "model_and_preprocess",
                        lambda *a, **k: pytest.fail("a model built for a data-blind ranker"))
    shipped = shipped_evidence()
    static = shipped.baseline_values["static_rank"]
    result = rank(rank_cfg("score.ranker=static_rank", "models=[efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]"))
    assert dict(zip(result.table["model"], result.table["value"])) == {m: static[m] for m in result.table["model"]}
    assert (result.table["rank_lo"] == result.table["rank"]).all()  # the images cannot move a data-blind ranking


# --- data options and bad input ---------------------------------------------------------------------------------

def test_a_csv_with_other_column_names_says_which_option_to_set(project, tmp_path, labels_csv):
    from medxfer.data.datasets import load_dataset
    from medxfer.data.readers import path_source

    frame = pd.read_csv(labels_csv).rename(columns={"image": "image_path", "label": "target", "group": "patient"})
    other = labels_csv.parent / "other.csv"
    frame.to_csv(other, index=False)
    node = OmegaConf.to_container(compose_config("rank", [f"dataset.path={other}"]).dataset)
    with pytest.raises(DataError, match=re.escape(f"{other}: no column 'image' for image paths; set "
                                                  "dataset.image_col=<column>; columns found: ['image_path', 'target', 'patient']")):
        load_dataset(node)
    node = OmegaConf.to_container(compose_config("rank", [
        f"dataset.path={other}", "dataset.image_col=image_path", "dataset.label_col=target", "dataset.group_col=patient",
        "dataset.split.val=0.2", "dataset.split.test=0.2"]).dataset)
    data = load_dataset(node)
    assert path_source(node)["name"] == labels_csv.parent.name and data.train.groups is not None
    groups = [set(t.groups) for t in (data.train, data.val, data.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])  # a patient in one split


def test_a_folder_with_one_class_or_one_image_is_a_clear_error(project, tmp_path):
    from medxfer.data.datasets import load_dataset

    one_class = tmp_path / "one_class" / "normal"
    one_class.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (8, 8), (i, i, i)).save(one_class / f"{i}.png")
    for folder, found in ((one_class.parent, "5 image(s) in 1 class(es) ('normal': 5)"),):
        node = OmegaConf.to_container(compose_config("rank", [f"dataset.path={folder}"]).dataset)
        with pytest.raises(DataError, match=re.escape(f"dataset.path={folder}: {found}") + ".*at least 2 classes"):
            load_dataset(node)
    single = tmp_path / "single" / "a"
    single.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(single / "x.png")
    node = OmegaConf.to_container(compose_config("rank", [f"dataset.path={single.parent}"]).dataset)
    with pytest.raises(DataError, match=r"1 image\(s\) in 1 class\(es\)"):
        load_dataset(node)


def test_bad_input_is_refused_before_any_run(rank_cfg, project, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model config\(s\) \['resnet_9000'\].*efficientnet_lite0"):
        rank(rank_cfg("models=[efficientnet_lite0,resnet_9000]"))
    with pytest.raises(ConfigError, match=r"unknown score\(s\) \['nope'\] in score.names"):
        rank(rank_cfg("score=ens_z", "score.names=[logme,nope]"))
    with pytest.raises(RankError, match=r"tags: \['cell'\] are tags of the rank run's schema"):
        rank(rank_cfg("score=logme", "+tags.cell=mine"))
    missing = tmp_path / "nowhere" / "labels.csv"
    with pytest.raises(DataError, match=re.escape(str(missing.parent))):
        rank(rank_cfg("score=logme", dataset=missing))
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("default/rank")
    assert exp is None or len(mlflow.search_runs(experiment_ids=[exp.experiment_id])) == 0


def test_a_path_given_as_the_dataset_option_names_dataset_path(tmp_path):
    from medxfer.cli.rank import _dataset_path_hint

    with pytest.raises(ConfigError, match=re.escape("dataset.path=/data/mine/labels.csv")):
        _dataset_path_hint(["dataset=/data/mine/labels.csv"])
    _dataset_path_hint(["dataset=synthetic_mri"])  # a config name passes
