"""The analysis stage reads the study back from MLflow, picks trials, correlates, logs tables and figures."""

from __future__ import annotations

import struct

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medxfer.analysis import AnalysisError, EnsembleWarning, add_ensembles, correlate, parse_ensembles
from medxfer.stages.analyze import IncompleteStudy, run_analyze

from conftest import compose_config, log_fake_study


ENSEMBLES = parse_ensembles({"ens_rank": {"kind": "rank"}, "ens_z": {"kind": "zscore"}, "ens_linear": {"kind": "linear"}})


def _png_width(path) -> int:
    with open(path, "rb") as f:
        return struct.unpack(">I", f.read(24)[16:20])[0]


def test_analysis_of_a_tracked_study(project):
    truth = log_fake_study(project)
    result = run_analyze(compose_config("analyze", ["bootstrap.n=100"]))
    # expected: score runs joined with the trial of best val/bal_acc, plus the default ensembles over both scores
    rows = [{"dataset": d, "model": m, "score": s, "value": v[f"score/{s}"], "target": v["selected"]["test/bal_acc"]}
            for (m, d), v in truth.items() for s in ("alpha", "beta")]
    expected = correlate(add_ensembles(pd.DataFrame(rows), ENSEMBLES).table, n_boot=100)
    pd.testing.assert_frame_equal(result.iid.reset_index(drop=True), expected)
    ood_rows = [{"dataset": d, "model": m, "score": s, "value": v["selected"][f"ood_score/{s}"],
                 "target": v["selected"]["ood/bal_acc"]} for (m, d), v in truth.items() for s in ("alpha", "beta")]
    ood_expected = correlate(add_ensembles(pd.DataFrame(ood_rows), ENSEMBLES).table, n_boot=100)
    pd.testing.assert_frame_equal(result.ood.reset_index(drop=True), ood_expected)
    assert set(result.ood.score) == {"alpha", "beta", "ens_rank", "ens_z", "ens_linear"}

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "analysis"
    ex = expected.set_index(["dataset", "score"])
    assert run.data.metrics["tau/d1/alpha"] == pytest.approx(ex.loc[("d1", "alpha"), "tau"])
    assert run.data.metrics["wtau/ALL/beta"] == pytest.approx(ex.loc[("ALL", "beta"), "wtau"])
    assert "ood_tau/d2/beta" in run.data.metrics
    for name in ("ens_rank", "ens_z", "ens_linear"):
        assert run.data.metrics[f"tau/d1/{name}"] == pytest.approx(ex.loc[("d1", name), "tau"])
        assert f"wtau/ALL/{name}" in run.data.metrics and f"ood_tau/ALL/{name}" in run.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "figures")}
    assert arts == {f"figures/correlation_{k}.{e}" for k in ("iid", "ood") for e in ("png", "pdf")}
    tables = {a.path for a in MlflowClient().list_artifacts(result.run_id, "tables")}
    assert {"tables/correlations_iid.csv", "tables/table_iid.csv", "tables/ensemble_weights.csv"} <= tables
    assert all(p.is_file() and p.stat().st_size > 1000 for p in result.figures)
    # the CSV tables and the figures (one column per score and ensemble: 2.3 in each at 150 dpi) have the ensembles
    out = result.figures[0].parent
    assert {"ens_rank", "ens_z", "ens_linear"} <= set(pd.read_csv(out / "correlations_iid.csv").score)
    assert {"ens_rank", "ens_z", "ens_linear"} <= set(pd.read_csv(out / "correlations_ood.csv").score)
    assert all(_png_width(p) == round((2.3 * 5 + 1.5) * 150) for p in result.figures if p.suffix == ".png")
    weights = pd.read_csv(MlflowClient().download_artifacts(result.run_id, "tables/ensemble_weights.csv"))
    assert list(weights.columns) == ["split", "ensemble", "held_out", "n_train", "alpha", "weight/alpha", "weight/beta"]
    assert set(zip(weights.split, weights.held_out)) == {(s, h) for s in ("iid", "ood") for h in ("d1", "d2", "none")}
    pd.testing.assert_frame_equal(weights, result.weights, check_dtype=False)


def test_ensembles_can_be_switched_off_or_restricted(project):
    truth = log_fake_study(project)
    plain = run_analyze(compose_config("analyze", ["bootstrap.n=20", "ensembles=null"]))
    assert set(plain.iid.score) == {"alpha", "beta"} and plain.weights.empty
    only = run_analyze(compose_config("analyze", ["bootstrap.n=20", "~ensembles.ens_linear", "~ensembles.ens_z",
                                                  "ensembles.ens_rank.scores=[beta]"]))
    assert set(only.iid.score) == {"alpha", "beta", "ens_rank"}
    ex = only.iid.set_index(["dataset", "score"])
    # a rank ensemble of one score is that score's ranking
    assert ex.loc[("d1", "ens_rank"), "tau"] == pytest.approx(ex.loc[("d1", "beta"), "tau"])


def test_ensemble_config_errors_stop_before_any_run(project):
    log_fake_study(project)
    with pytest.raises(AnalysisError, match=r"score\(s\) \['logme'\] not in the in-distribution table; available: \['alpha', 'beta'\]"):
        run_analyze(compose_config("analyze", ["ensembles.ens_rank.scores=[alpha,logme]"]))
    with pytest.raises(AnalysisError, match=r"unknown kind 'median'"):
        run_analyze(compose_config("analyze", ["ensembles.ens_rank.kind=median"]))
    assert mlflow.get_experiment_by_name("default/analysis") is None


def test_one_dataset_study_skips_the_linear_ensemble_with_a_warning(project):
    log_fake_study(project)
    with pytest.warns(EnsembleWarning, match="ens_linear.*skipped: leave-one-dataset-out needs >= 2 datasets"):
        result = run_analyze(compose_config("analyze", ["datasets=[d1]", "bootstrap.n=20"]))
    assert {"ens_rank", "ens_z"} <= set(result.iid["score"]) and "ens_linear" not in set(result.iid["score"])


def test_a_model_lacking_a_score_stops_the_ensembles_unless_incomplete_is_allowed(project):
    log_fake_study(project)
    # a newer score run for (m2, d1) replaces the old one and has no score/beta
    from medxfer.tracking import ensure_experiment

    exp = ensure_experiment("default/score", str(project / "mlruns" / "artifacts"))
    with mlflow.start_run(experiment_id=exp, tags={"model": "m2", "dataset": "d1", "study": "default", "stage": "score", "split": "iid"}):
        mlflow.log_metric("score/alpha", 0.5)
    with pytest.raises(AnalysisError, match=r"model='m2' dataset='d1' score='beta'.*allow_incomplete=true"):
        run_analyze(compose_config("analyze", ["bootstrap.n=20"]))
    with pytest.warns(EnsembleWarning, match="left out of the ensemble"):
        result = run_analyze(compose_config("analyze", ["bootstrap.n=20", "allow_incomplete=true"]))
    iid = result.iid.set_index(["dataset", "score"])
    assert iid.loc[("d1", "beta"), "n"] == 3 and iid.loc[("d1", "ens_z"), "n"] == 3 and iid.loc[("d1", "alpha"), "n"] == 4
    with open(MlflowClient().download_artifacts(result.run_id, "warnings.txt")) as f:
        assert "left out of the ensemble (a score missing): model='m2' dataset='d1' score='beta'" in f.read()


def test_incomplete_study_lists_missing_cells(project):
    log_fake_study(project, skip=(("m3", "d2"),))
    with pytest.raises(IncompleteStudy, match=r"missing 2 run\(s\):\n  score run \(iid\) for model=m3 dataset=d2\n  fine-tune run for model=m3 dataset=d2"):
        run_analyze(compose_config("analyze", ["bootstrap.n=50"]))
    result = run_analyze(compose_config("analyze", ["bootstrap.n=50", "allow_incomplete=true"]))
    assert result.missing and set(result.iid[result.iid.dataset == "d2"].n) == {3}


def test_empty_study_is_a_clear_error(project):
    with pytest.raises(IncompleteStudy, match="no .* pair to correlate"):
        run_analyze(compose_config("analyze", ["study=nothing", "allow_incomplete=true"]))
