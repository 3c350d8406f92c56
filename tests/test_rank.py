"""medxfer-rank: models ranked for a dataset given as a CSV, ensembles, the tau of the tracked study, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import compose_config
from medxfer.analysis import apply_pooling, correlate, fit_linear_pooling
from medxfer.results import study_tables
from medxfer.workflows.grid import study_manifest
from medxfer.cli.rank import rank_overrides
from medxfer.data.tables import DataError
from medxfer.stages.rank import NO_STUDY, RankError, run_rank

BIN = Path(sys.executable).parent
LITE = ["efficientnet_lite0", "efficientnet_lite1"]
SMALL = ["preprocess.input_size=64", "preprocess.resize=73", "extract.progress=false"]


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory) -> Path:
    """A user's dataset: PNG images and labels.csv (image, label, group), 48 px, 24 images."""
    from medxfer.data.synthetic import generate_synthetic

    return generate_synthetic("synthetic_derm", tmp_path_factory.mktemp("mine") / "lesions", n_per_class=12,
                              image_size=48, progress=False)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the in-process tests, so that only the first one runs the models."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def rank_cfg(project, labels_csv, feature_cache):
    def make(*overrides: str, dataset: Path = labels_csv):
        args = [f"dataset={dataset}", f"models=[{','.join(LITE)}]", f"paths.cache_dir={feature_cache}", *SMALL, *overrides]
        return compose_config("rank", rank_overrides(args))

    return make


def _cli(args, root, timeout=300):
    env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "medxfer-rank"), *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_ranks_models_of_a_csv_dataset_logs_a_run_and_reuses_the_feature_cache(tmp_path, labels_csv):
    args = [f"dataset={labels_csv}", f"models=[{','.join(LITE)}]", "score=logme",
            "preprocess.input_size=64", "preprocess.resize=73"]
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("(features extracted") == len(LITE)
    assert "\r" not in first.stdout + first.stderr  # no progress bar in a log (stdout is a pipe here)
    rows = re.findall(r"^\s*(\d+)\s+(efficientnet_lite\d)\s+(-?[\d.e+-]+)\s+(.+)$", first.stdout, flags=re.M)
    assert sorted(m for _, m, _, _ in rows) == sorted(LITE)
    ranks = {m: int(r) for r, m, _, _ in rows}
    values = {m: float(v) for _, m, v, _ in rows}
    assert sorted(ranks.values()) == list(range(1, len(LITE) + 1))
    assert sorted(LITE, key=lambda m: -values[m]) == sorted(LITE, key=ranks.get)
    assert all(tau.strip() == NO_STUDY for *_, tau in rows)
    assert f"dataset csv ({labels_csv})" in first.stdout

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/rank"])
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    run = runs.iloc[0]
    assert (run["tags.stage"], run["tags.score"], run["tags.dataset"], run["tags.study"]) == ("rank", "logme", "csv", "default")
    assert int(run["params.n_samples"]) > 0 and all(m in run["params.models"] for m in LITE)
    for m in LITE:
        assert run[f"metrics.rank/{m}"] == ranks[m]
        assert run[f"metrics.score/{m}"] == pytest.approx(values[m], rel=1e-5)
    assert "rank.csv" in {a.path for a in MlflowClient().list_artifacts(run["run_id"])}

    second = _cli(args, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("features from the cache") == len(LITE)
    assert len(mlflow.search_runs(experiment_names=["default/rank"])) == 2  # a new run every time


def test_ens_rank_and_ens_z_combine_the_scores_of_each_model(rank_cfg, project, monkeypatch):
    import medxfer.workflows.grid

    def forbidden(*a, **k):  # the project tracks no study: nothing to compose its manifest for
        raise AssertionError("the manifest of a study without runs was composed")

    monkeypatch.setattr(medxfer.workflows.grid, "study_manifest", forbidden)
    scores = ["logme", "leep", "nce"]
    ens_rank = run_rank(rank_cfg("rank.score=ens_rank", f"rank.ensemble_scores=[{','.join(scores)}]"))
    table = ens_rank.table.set_index("model")
    parts = table[[f"score/{s}" for s in scores]]
    np.testing.assert_allclose(table["value"], parts.rank(method="average").mean(axis=1))
    assert list(ens_rank.table["rank"]) == sorted(ens_rank.table["rank"])  # best first
    assert ens_rank.study_tau.missing == NO_STUDY and ens_rank.table["tau"].isna().all()
    assert NO_STUDY in ens_rank.report()

    ens_z = run_rank(rank_cfg("score=ens_z", f"rank.ensemble_scores=[{','.join(scores)}]"))
    table = ens_z.table.set_index("model")
    parts = table[[f"score/{s}" for s in scores]]
    np.testing.assert_allclose(table["value"], ((parts - parts.mean()) / parts.std(ddof=0)).mean(axis=1))
    assert all(ens_z.cached.values())  # the first ranking extracted the features
    with pytest.raises(RankError, match="run the study|Run the study"):
        run_rank(rank_cfg("score=ens_linear"))


def test_features_of_a_cell_scored_by_medxfer_score_are_reused(rank_cfg, project, labels_csv, monkeypatch):
    import medxfer.models.extract as extract
    from medxfer.stages.score import run_score

    cache = project / "fresh-cache"
    scored = run_score(compose_config("score", [
        "model=efficientnet_lite0", "dataset=csv", f"dataset.root={labels_csv.parent}", "dataset.group_col=group",
        "preprocess=small", "score=logme", "splits=[train]", f"paths.cache_dir={cache}", *SMALL]))

    def forbidden(*a, **k):
        raise AssertionError("a forward pass for features the score stage cached")

    import medxfer.models.features as features

    monkeypatch.setattr(extract, "extract_features", forbidden)
    monkeypatch.setattr(features, "extract_features", forbidden)
    result = run_rank(rank_cfg("models=[efficientnet_lite0]", f"paths.cache_dir={cache}"))
    assert result.cached == {"efficientnet_lite0": True}
    assert result.table["value"].iloc[0] == scored[0].scores["logme"]  # both score on one thread: bit-identical


def test_another_folder_with_the_same_file_names_and_labels_is_not_read_from_the_cache(rank_cfg, project, labels_csv,
                                                                                        tmp_path):
    """Every CSV dataset is named csv: the images themselves (path, size, mtime) must key the feature cache."""
    import shutil

    from PIL import Image, ImageOps

    copy = tmp_path / "inverted"
    shutil.copytree(labels_csv.parent, copy)
    for png in copy.rglob("*.png"):
        ImageOps.invert(Image.open(png).convert("RGB")).save(png)
    cache = project / "shared-cache"
    first = run_rank(rank_cfg("models=[efficientnet_lite0]", f"paths.cache_dir={cache}"))
    second = run_rank(rank_cfg("models=[efficientnet_lite0]", f"paths.cache_dir={cache}",
                               dataset=copy / labels_csv.name))
    assert second.cached == {"efficientnet_lite0": False}
    assert second.table["value"].iloc[0] != first.table["value"].iloc[0]
    again = run_rank(rank_cfg("models=[efficientnet_lite0]", f"paths.cache_dir={cache}", dataset=copy / labels_csv.name))
    assert again.cached == {"efficientnet_lite0": True}


def test_tau_column_comes_from_the_tracked_study(rank_cfg, study_project, tracked_study):
    from medxfer.workflows.study import analyze_study as run_analyze

    # no analysis run yet: computed from the study's score and fine-tune runs
    # the study's grid, and its preprocessing (it scored at 64 px without a resize of its own): else no tau applies
    grid = [tracked_study.rank_study_overrides(), "preprocess.resize=null"]
    result = run_rank(rank_cfg("score=logme", *grid))
    # the study's table as the analysis reads it: the manifest's cells of the fixture's grid
    c = OmegaConf.to_container(tracked_study.analyze_config(), resolve=True)
    study = study_tables(c["study"], study_manifest(c)).iid
    expected = correlate(study[study["score"] == "logme"]).set_index(["dataset", "score"]).loc[("ALL", "logme")]
    tau = result.study_tau
    assert (tau.tau, tau.tau_lo, tau.tau_hi) == pytest.approx((expected["tau"], expected["tau_lo"], expected["tau_hi"]))
    n_models, n_datasets = len(tracked_study.models), len(tracked_study.datasets)
    assert (tau.n_models, tau.n_datasets) == (n_models, n_datasets) and "computed" in tau.source
    assert (result.table["tau"] == tau.tau).all()
    assert f"{tau.tau:.2f} [{tau.tau_lo:.2f}, {tau.tau_hi:.2f}]" in result.report()
    assert f"{n_datasets} dataset(s) x {n_models} model(s)" in result.report()

    # ens_linear: weights fitted on the study, applied to the models ranked here
    pair = ["logme", "reg_hscore"]
    linear = run_rank(rank_cfg("score=ens_linear", f"rank.ensemble_scores=[{','.join(pair)}]", *grid))
    weights = fit_linear_pooling(study, pair, alpha=1e-3)
    pd.testing.assert_series_equal(linear.weights, weights)
    long = pd.DataFrame([{"dataset": row["dataset"], "model": row["model"], "score": s, "value": row[f"score/{s}"]}
                         for _, row in linear.table.iterrows() for s in pair])
    pooled = apply_pooling(long, weights).set_index("model")["value"]
    np.testing.assert_allclose(linear.table.set_index("model")["value"], pooled.reindex(linear.table["model"]))
    assert linear.study_tau.tau is not None

    # with an analysis run, its tau and interval are the ones shown
    analysis = run_analyze(tracked_study.analyze_config("bootstrap.n=50"))
    logged = analysis.iid.set_index(["dataset", "score"])
    every = ",".join(tracked_study.scores)  # the analysis' ensembles combine every score of the study
    for score, extra in (("logme", []), ("ens_rank", [f"rank.ensemble_scores=[{every}]"])):
        tau = run_rank(rank_cfg(f"score={score}", *extra, *grid)).study_tau
        assert tau.source.startswith("analysis run " + analysis.run_id[:8])
        row = logged.loc[("ALL", score)]
        assert (tau.tau, tau.tau_lo, tau.tau_hi) == pytest.approx((row["tau"], row["tau_lo"], row["tau_hi"]))
    # an ensemble of other scores than the analysis' is computed from the runs instead
    other = run_rank(rank_cfg("score=ens_rank", "rank.ensemble_scores=[logme]", *grid)).study_tau
    assert "computed" in other.source


def test_bad_input_is_refused_before_any_run(rank_cfg, project, tmp_path):
    with pytest.raises(RankError, match=r"unknown model config\(s\) \['resnet_9000'\].*efficientnet_lite0"):
        run_rank(rank_cfg("models=[efficientnet_lite0,resnet_9000]"))
    with pytest.raises(RankError, match=r"unknown score 'nope'.*logme.*ens_rank"):
        run_rank(rank_cfg("rank.score=nope"))
    with pytest.raises(RankError, match=r"rank.ensemble_scores: unknown score\(s\) \['nope'\]"):
        run_rank(rank_cfg("score=ens_z", "rank.ensemble_scores=[logme,nope]"))
    missing = tmp_path / "nowhere" / "labels.csv"
    with pytest.raises(RankError, match=re.escape(f"dataset CSV file {missing} not found")):
        run_rank(rank_cfg(dataset=missing))
    wrong = tmp_path / "wrong" / "data.csv"
    wrong.parent.mkdir()
    wrong.write_text("file,diagnosis\na.png,nevus\n")
    with pytest.raises(DataError, match=re.escape(str(wrong)) + r": no column 'image'"):
        run_rank(rank_cfg(dataset=wrong))
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("default/rank")
    assert exp is None or len(mlflow.search_runs(experiment_ids=[exp.experiment_id])) == 0


def test_command_line_rewrites_dataset_paths_and_score(tmp_path):
    folder = tmp_path / "my data, v2"
    folder.mkdir()
    (folder / "labels.csv").write_text("image,label,group\na.png,x,p1\n")
    (folder / "plain.csv").write_text("image,label\na.png,x\n")
    assert rank_overrides([f"dataset={folder / 'labels.csv'}", "score=logme", "--cfg", "job"]) == [
        "dataset=csv", f"dataset.root='{folder}'", "dataset.csv='labels.csv'", "dataset.group_col=group",
        "rank.score=logme", "--cfg", "job"]
    assert rank_overrides([f"dataset={folder}"])[1:3] == [f"dataset.root='{folder}'", "dataset.csv='labels.csv'"]
    assert rank_overrides([f"dataset={folder / 'plain.csv'}"])[-1] == "dataset.csv='plain.csv'"
    assert rank_overrides([f"dataset={folder / 'labels.csv'}", "dataset.group_col=null"])[-1] == "dataset.group_col=null"
    assert rank_overrides(["dataset.root=/d", "dataset.csv=x.csv"]) == ["dataset=csv", "dataset.root=/d", "dataset.csv=x.csv"]
    assert rank_overrides(["dataset=synthetic_mri", "models=[efficientnet_lite0]"]) == [
        "dataset=synthetic_mri", "models=[efficientnet_lite0]"]
    cfg = compose_config("rank", rank_overrides([f"dataset={folder / 'labels.csv'}", "score=ens_z"]))
    assert (cfg.dataset.root, cfg.dataset.csv, cfg.dataset.group_col, cfg.rank.score) == (
        str(folder), "labels.csv", "group", "ens_z")
