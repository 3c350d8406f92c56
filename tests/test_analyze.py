"""The analysis stage reads the study back from MLflow, picks trials, correlates, logs tables and figures."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medxfer.analysis import correlate
from medxfer.stages.analyze import IncompleteStudy, run_analyze

from conftest import compose_config, log_fake_study


def test_analysis_of_a_tracked_study(project):
    truth = log_fake_study(project)
    result = run_analyze(compose_config("analyze", ["bootstrap.n=100"]))
    # expected: score runs joined with the trial of best val/bal_acc
    rows = [{"dataset": d, "model": m, "score": s, "value": v[f"score/{s}"], "target": v["selected"]["test/bal_acc"]}
            for (m, d), v in truth.items() for s in ("alpha", "beta")]
    expected = correlate(pd.DataFrame(rows), n_boot=100)
    pd.testing.assert_frame_equal(result.iid.reset_index(drop=True), expected)
    ood_rows = [{"dataset": d, "model": m, "score": s, "value": v["selected"][f"ood_score/{s}"],
                 "target": v["selected"]["ood/bal_acc"]} for (m, d), v in truth.items() for s in ("alpha", "beta")]
    pd.testing.assert_frame_equal(result.ood.reset_index(drop=True), correlate(pd.DataFrame(ood_rows), n_boot=100))

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "analysis"
    ex = expected.set_index(["dataset", "score"])
    assert run.data.metrics["tau/d1/alpha"] == pytest.approx(ex.loc[("d1", "alpha"), "tau"])
    assert run.data.metrics["wtau/ALL/beta"] == pytest.approx(ex.loc[("ALL", "beta"), "wtau"])
    assert "ood_tau/d2/beta" in run.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "figures")}
    assert arts == {f"figures/correlation_{k}.{e}" for k in ("iid", "ood") for e in ("png", "pdf")}
    tables = {a.path for a in MlflowClient().list_artifacts(result.run_id, "tables")}
    assert "tables/correlations_iid.csv" in tables
    assert all(p.is_file() and p.stat().st_size > 1000 for p in result.figures)


def test_incomplete_study_lists_missing_cells(project):
    log_fake_study(project, skip=(("m3", "d2"),))
    with pytest.raises(IncompleteStudy, match=r"missing 2 run\(s\):\n  score run \(iid\) for model=m3 dataset=d2\n  fine-tune run for model=m3 dataset=d2"):
        run_analyze(compose_config("analyze", ["bootstrap.n=50"]))
    result = run_analyze(compose_config("analyze", ["bootstrap.n=50", "allow_incomplete=true"]))
    assert result.missing and set(result.iid[result.iid.dataset == "d2"].n) == {3}


def test_empty_study_is_a_clear_error(project):
    with pytest.raises(IncompleteStudy, match="no .* pair to correlate"):
        run_analyze(compose_config("analyze", ["study=nothing", "allow_incomplete=true"]))
