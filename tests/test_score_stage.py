"""The score stage: runs per split with the schema's tags, skipping finished cells, failures tracked."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import medxfer.models.features as features_module
import medxfer.models.zoo as zoo_module
import medxfer.plans as plans
import medxfer.stages.score as score_stage
from medxfer.scores import available_scores
from medxfer.stages.score import run_score
from medxfer.tracking import TrackingError


def _runs(project, experiment="default/score"):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def test_score_cell_logs_one_run_per_split_with_every_score(score_cfg, project):
    results = run_score(score_cfg())
    assert [r.split for r in results] == ["train", "ood"] and not any(r.skipped for r in results)
    runs = _runs(project)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.split"]) == {"train", "ood"}
    for _, run in runs.iterrows():
        assert run["tags.stage"] == "score" and run["tags.model"] == "efficientnet_lite0"
        assert run["tags.dataset"] == "synthetic_derm" and run["tags.study"] == "default"
        assert len(run["tags.cell"]) == 16 and run["tags.weights_source"] == "package"
        for name in available_scores():
            value = run[f"metrics.score/{name}"]
            assert math.isfinite(value), (name, value)
            assert run[f"metrics.time/{name}_s"] >= 0
        assert run["metrics.time/extract_s"] > 0
        assert int(run["params.feat_dim"]) == 1280 and int(run["params.n_classes"]) == 2
        assert run["params.model.arch"] == "tf_efficientnet_lite0"
        artifacts = {a.path for a in MlflowClient().list_artifacts(run["run_id"])}
        assert {"config.yaml", "overrides.yaml", "labels.json"} <= artifacts
        # readable in the MLflow UI: the full run name, and the split as a dataset input with its digest and size
        assert run["tags.mlflow.runName"] == f"efficientnet_lite0@synthetic_derm/{run['tags.split']}"
        inputs = MlflowClient().get_run(run["run_id"]).inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.digest == run["tags.data_digest"][:16]
        assert '"num_rows": ' + run["params.n_samples"] in inputs[0].dataset.profile


def test_rerun_adds_no_run_and_does_no_forward_pass(score_cfg, project, monkeypatch):
    run_score(score_cfg())
    first = _runs(project)

    def forbidden(*a, **k):
        raise AssertionError("a forward pass was made for a finished cell")

    with monkeypatch.context() as m:
        m.setattr(features_module, "extract_features", forbidden)
        m.setattr(zoo_module, "create_model", forbidden)
        results = run_score(score_cfg())
    assert all(r.skipped for r in results)
    assert len(_runs(project)) == len(first) == 2
    # force=true runs again, but the feature cache spares the forward pass and gives the same scores
    monkeypatch.setattr(features_module, "extract_features", forbidden)
    forced = run_score(score_cfg("force=true"))
    assert all(r.cached_features and not r.skipped for r in forced)
    runs = _runs(project)
    assert len(runs) == 4
    by_split = runs.groupby("tags.split")["metrics.score/logme"].nunique()
    assert (by_split == 1).all()  # identical values from cached features


def test_corrupted_cache_file_is_recomputed(score_cfg, project):
    run_score(score_cfg("splits=[train]"))
    cached = list((project / ".cache").rglob("train-*.npz"))
    assert len(cached) == 1
    data = cached[0].read_bytes()
    cached[0].write_bytes(data[: len(data) // 2])  # truncated
    results = run_score(score_cfg("splits=[train]", "force=true"))
    assert not results[0].cached_features
    runs = _runs(project)
    assert runs["metrics.score/hscore"].nunique() == 1


def test_failing_score_marks_run_failed_and_keeps_other_scores(score_cfg, project, monkeypatch):
    import dataclasses

    import medxfer.scores as scores

    real = scores.REGISTRY["logme"]

    def broken(inputs, **options):
        raise scores.ScoreError("logme exploded on purpose")

    monkeypatch.setitem(scores.REGISTRY, "logme", dataclasses.replace(real, fn=broken))
    with pytest.raises(scores.ScoreError, match="logme: logme exploded on purpose"):
        run_score(score_cfg("splits=[train]"))
    runs = _runs(project)
    assert list(runs["status"]) == ["FAILED"]
    assert "logme exploded" in runs["tags.error"][0]
    assert math.isfinite(runs["metrics.score/hscore"][0])  # the other scores were kept
    # the next run retries the failed cell
    monkeypatch.setitem(scores.REGISTRY, "logme", real)
    run_score(score_cfg("splits=[train]"))
    assert sorted(_runs(project)["status"]) == ["FAILED", "FINISHED"]


def test_crash_mid_run_is_never_left_running(score_cfg, project, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("simulated crash during extraction")

    monkeypatch.setattr(features_module, "extract_features", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_score(score_cfg("splits=[train]"))
    runs = _runs(project)
    assert list(runs["status"]) == ["FAILED"]


def test_unknown_score_name(score_cfg):
    with pytest.raises(ValueError, match=r"unknown score\(s\) \['bogus'\].*registered scores"):
        run_score(score_cfg("score.names=[bogus]"))


def test_unreachable_tracking_uri_fails_before_any_work(score_cfg, monkeypatch):
    monkeypatch.setattr(plans, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking store"):
        run_score(score_cfg("tracking.uri=http://127.0.0.1:9"))


def test_missing_weights_fail_before_data_is_read(score_cfg, monkeypatch):
    from medxfer.models.zoo import WeightsNotFound

    monkeypatch.setattr(plans, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(WeightsNotFound, match="Provide one of"):
        run_score(score_cfg("model=resnet18"))


def test_unknown_model_or_dataset_config():
    from hydra.errors import MissingConfigException

    from conftest import compose_config

    with pytest.raises(MissingConfigException, match="model.*resnet999"):
        compose_config("score", ["model=resnet999"])
    with pytest.raises(MissingConfigException, match="dataset.*nosuchdata"):
        compose_config("score", ["dataset=nosuchdata"])


def test_score_all_logs_every_registered_scorer_with_extras(score_cfg, project):
    """score=all: the paper's seven and the later scorers, the subsample sizes, the model's published top-1."""
    results = run_score(score_cfg("score=all", "splits=[train]", "+score.options.nleep.seeds=[0,1,2]"))
    runs = _runs(project)
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    run = runs.iloc[0]
    everything = available_scores(include_opt_in=True)
    assert {"sfda", "parc", "transrate", "etran", "pactran", "knn", "linear_probe", "imagenet_top1"} <= set(everything)
    for name in everything:
        assert math.isfinite(run[f"metrics.score/{name}"]), name
    assert results[0].scores.keys() == set(everything)
    assert run["metrics.score/imagenet_top1"] == 74.830  # conf/model/efficientnet_lite0.yaml
    n = int(run["params.n_samples"])
    assert run["metrics.score_extra/parc/n_samples"] == min(n, 2000) and run["metrics.score_extra/parc/seed"] == 0
    assert run["metrics.score_extra/knn/n_samples"] == min(n, 2000)
    assert run["metrics.score_extra/nleep/n_seeds"] == 3 and run["metrics.score_extra/nleep/std"] >= 0
    # knn and linear_probe are balanced accuracies; sfda a mean probability
    for name in ("knn", "linear_probe", "sfda"):
        assert 0 <= run[f"metrics.score/{name}"] <= 1


def test_score_options_are_checked_and_make_new_cells_only_when_they_change_a_value(score_cfg, project):
    def cells(*overrides):  # a finished cell is skipped: its id comes back without a second computation
        return run_score(score_cfg("score=parc", "splits=[train]", *overrides))[0].cell

    assert cells() == cells("+score.options.parc.max_samples=2000")  # spelling out the default
    assert cells() != cells("+score.options.parc.max_samples=100")
    # filling in the published top-1 does not turn finished cells of other scores into new ones
    assert cells() == cells("model.imagenet_top1=null")
    with pytest.raises(ValueError, match=r"score.options.parc: unknown option\(s\) \['max_sample'\]; parc accepts"):
        run_score(score_cfg("score=parc", "+score.options.parc.max_sample=10"))
    with pytest.raises(ValueError, match=r"score.options names unknown score\(s\) \['parcc'\]"):
        run_score(score_cfg("score=parc", "+score.options.parcc.seed=1"))
    assert math.isfinite(run_score(score_cfg("score=parc", "splits=[train]", "force=true"))[0].scores["parc"])


def test_imagenet_top1_without_a_published_value_fails_naming_the_option(score_cfg, project):
    with pytest.raises(Exception, match=r"model.imagenet_top1"):
        run_score(score_cfg("score=imagenet_top1", "splits=[train]", "model.imagenet_top1=null"))
    runs = _runs(project)
    assert list(runs["status"]) == ["FAILED"] and "model.imagenet_top1" in runs["tags.error"].iloc[0]
