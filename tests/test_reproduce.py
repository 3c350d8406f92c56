"""medxfer-reproduce: a score cell rerun from its logged config matches exactly, provenance is compared."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medxfer.workflows.reproduce import reproduce
from medxfer.stages.score import run_score


def test_score_run_reproduces_exactly_and_is_tagged(score_cfg, project, monkeypatch):
    import medxfer.models.features as features

    original = run_score(score_cfg("splits=[train]"))[0].run_id
    forward_passes = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: forward_passes.append(1) or real(*a, **k))
    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    client.set_tag(original, "weights_id", "sha256:" + "0" * 64)  # pretend the weights changed since
    comparison = reproduce(original, tracking_uri=uri)
    assert comparison.matches and comparison.max_difference == 0.0 and comparison.tolerance == 0.0
    names = {r[0] for r in comparison.rows}
    assert {"score/logme", "score/hscore", "score/nleep"} <= names and not any(n.startswith("time/") for n in names)
    new = client.get_run(comparison.reproduction)
    assert new.data.tags["reproduces"] == original and new.info.status == "FINISHED"
    assert new.data.tags["split"] == "train"
    assert forward_passes == [1], "the reproduction read the feature cache instead of recomputing"
    assert any(w.startswith("weights_id differs") for w in comparison.warnings)
    assert "score/logme" in comparison.table()


def test_unknown_run_id_is_clear(project):
    with pytest.raises(ValueError, match="no run 'deadbeef'"):
        reproduce("deadbeef", tracking_uri=f"sqlite:///{project}/mlruns/mlflow.db")
