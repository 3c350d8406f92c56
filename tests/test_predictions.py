"""Per-sample predictions: every fine-tune run logs the evaluated checkpoint's probabilities on the test and
OOD sets, and they reproduce the logged balanced accuracies exactly."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import balanced_accuracy_score

from medxfer.stages.finetune import run_finetune
from medxfer.training.predictions import Predictions

from conftest import TINY, compose_config

FT_TINY = [o for o in TINY if not o.startswith("extract.")] + [
    "finetune.progress=false", "finetune.max_epochs=1", "finetune.batch_size=8",
]


def test_predictions_round_trip_and_match_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, 40)
    p = Predictions(np.array([f"img{i}.png" for i in range(40)]), labels, probs)
    back = Predictions.load(p.save(tmp_path / "test.npz"))
    assert back.ids.tolist() == p.ids.tolist() and np.array_equal(back.labels, labels)
    assert np.array_equal(back.probs, probs)
    assert back.balanced_accuracy() == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)), abs=1e-15)
    np.savez(tmp_path / "bad.npz", ids=p.ids, labels=labels)
    with pytest.raises(ValueError, match=r"bad.npz: predictions file lacks arrays \['probs'\]"):
        Predictions.load(tmp_path / "bad.npz")


def test_finetune_run_logs_predictions_that_reproduce_its_metrics(project, shared_data_dir):
    cfg = compose_config("finetune", [f"paths.data_dir={shared_data_dir}", *FT_TINY, "trial=1", "ood_scores=[]"])
    result = run_finetune(cfg)
    run = MlflowClient().get_run(result.run_id)
    arts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "predictions")}
    assert arts == {"predictions/test.npz", "predictions/ood.npz"}
    for split, metric in (("test", "test/bal_acc"), ("ood", "ood/bal_acc")):
        pred = Predictions.load(mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                                    artifact_path=f"predictions/{split}.npz"))
        assert len(pred.ids) == int(run.data.params[f"n_{split}"]) and len(set(pred.ids)) == len(pred.ids)
        assert np.allclose(pred.probs.sum(axis=1), 1, atol=1e-5)
        # the metric is a float32 of the same mean recall: equal once the recomputed value is cast the same way
        assert np.float32(pred.balanced_accuracy()) == np.float32(run.data.metrics[metric]), split
    test = Predictions.load(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="predictions/test.npz"))
    acc = float(np.mean(test.probs.argmax(1) == test.labels))
    assert np.float32(acc) == np.float32(run.data.metrics["test/acc"])
    assert int(run.data.params["n_params"]) > 1_000_000  # efficientnet_lite0's backbone: 3.4 M
