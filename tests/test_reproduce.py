"""medxfer-reproduce: a score cell rerun from its logged config matches exactly, provenance is compared."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medxfer.stages.reproduce import reproduce
from medxfer.stages.score import run_score


def test_score_run_reproduces_exactly_and_is_tagged(score_cfg, project):
    original = run_score(score_cfg("splits=[iid]"))[0].run_id
    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    client.set_tag(original, "weights_digest", "0" * 64)  # pretend the weights changed since
    comparison = reproduce(original, tracking_uri=uri)
    assert comparison.matches and comparison.max_difference == 0.0 and comparison.tolerance == 0.0
    names = {r[0] for r in comparison.rows}
    assert {"score/logme", "score/hscore", "score/nleep"} <= names and not any(n.startswith("time/") for n in names)
    new = client.get_run(comparison.reproduction)
    assert new.data.tags["reproduces"] == original and new.info.status == "FINISHED"
    assert new.data.tags["split"] == "iid"
    assert any(w.startswith("weights_digest differs") for w in comparison.warnings)
    assert "score/logme" in comparison.table()


def test_unknown_run_id_is_clear(project):
    with pytest.raises(ValueError, match="no run 'deadbeef'"):
        reproduce("deadbeef", tracking_uri=f"sqlite:///{project}/mlruns/mlflow.db")
