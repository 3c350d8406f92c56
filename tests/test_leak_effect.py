"""The leak's effect on a study's conclusions (medxfer.analysis.leak_effect): accuracies and taus on every test
sample beside those on the clean ones; and on the paper's real BrainTumor split, through the study's stages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medxfer.analysis.leak_effect import leak_effect
from medxfer.training.predictions import Predictions


def _predictions(correct: np.ndarray, leaked: np.ndarray | None) -> Predictions:
    labels = np.arange(len(correct)) % 2
    pred = np.where(correct, labels, 1 - labels)
    probs = np.eye(2)[pred]
    return Predictions(np.array([f"img{i}" for i in range(len(correct))]), labels, probs, leaked)


def test_accuracies_and_taus_are_given_with_and_without_the_leaked_test_samples():
    n, rng = 200, np.random.default_rng(0)
    leaked = np.zeros(n, bool)
    leaked[:100] = True
    # model a memorised the leaked half and is the weakest elsewhere; b and c do not depend on the leak
    correct = {"a": np.where(leaked, True, rng.random(n) < 0.45), "b": rng.random(n) < 0.6, "c": rng.random(n) < 0.65}
    runs = {m: f"run-{m}" for m in correct}
    preds = {runs[m]: _predictions(c, leaked) for m, c in correct.items()}
    replicates = pd.DataFrame({"model": list(correct), "dataset": "d", "seed": "", "run_id": list(runs.values())})
    # a score that ranks a first: right with the leak, wrong without it
    table = pd.DataFrame({"dataset": "d", "model": list(correct), "score": "s", "value": [3.0, 1.0, 2.0],
                          "target": [preds[runs[m]].balanced_accuracy() for m in correct]})
    effect = leak_effect(replicates, table, preds.get, n_boot=200, seed=0)
    acc = effect.accuracy.set_index("model")
    assert list(acc["n_test"]) == [n] * 3 and list(acc["n_clean"]) == [n - 100] * 3
    for m in correct:
        assert acc.loc[m, "accuracy_clean"] == pytest.approx(preds[runs[m]].clean().balanced_accuracy())
        assert acc.loc[m, "clean_lo"] <= acc.loc[m, "accuracy_clean"] <= acc.loc[m, "clean_hi"]
    assert acc.loc["a", "accuracy"] - acc.loc["a", "accuracy_clean"] > 0.1  # what the leak gave model a
    (row,) = effect.tau.to_dict("records")
    assert row["score"] == "s" and row["n"] == 3 and row["tau"] > row["tau_clean"]
    assert row["tau_lo"] <= row["tau"] <= row["tau_hi"] and row["tau_clean_lo"] <= row["tau_clean"] <= row["tau_clean_hi"]


def test_datasets_without_flagged_leaks_are_left_alone_and_old_runs_are_named():
    n = 40
    flagged = _predictions(np.ones(n, bool), np.arange(n) < 5)
    unflagged = _predictions(np.ones(n, bool), None)
    replicates = pd.DataFrame({"model": ["a", "b", "a", "b"], "dataset": ["d", "d", "e", "e"], "seed": "",
                               "run_id": ["1", "2", "3", "4"]})
    preds = {"1": unflagged, "2": unflagged, "3": flagged, "4": unflagged}
    table = pd.DataFrame({"dataset": ["d", "d", "e", "e"], "model": ["a", "b", "a", "b"], "score": "s",
                          "value": [1.0, 2.0, 1.0, 2.0], "target": [1.0, 1.0, 1.0, 1.0]})
    effect = leak_effect(replicates, table, preds.get, n_boot=50)
    assert len(effect.accuracy) == 0 and len(effect.tau) == 0
    assert len(effect.notes) == 1 and effect.notes[0].startswith("dataset e: not every selected run flags")


def test_predictions_keep_their_leak_flags_on_disk(tmp_path):
    p = _predictions(np.array([True, False, True]), np.array([True, False, False]))
    back = Predictions.load(p.save(tmp_path / "test.npz"))
    assert back.leaked.tolist() == [True, False, False] and back.clean().ids.tolist() == ["img1", "img2"]
    assert Predictions.load(_predictions(np.ones(2, bool), None).save(tmp_path / "old.npz")).leaked is None


@pytest.mark.slow
def test_a_study_on_the_papers_brain_tumor_split_reports_the_leak_side_by_side(real_data, project, zoo_cache):
    """Two models fine-tuned on BrainTumor's published split (training set capped, the 394 test images whole):
    each run flags the 88 test images byte-identical to a training (81) or a validation image (14; 7 to both), and
    the analysis gives accuracy and tau with them and without them."""
    import mlflow

    from medxfer.workflows.study import run_study

    from conftest import compose_config

    cache = project / "cache"
    cache.mkdir()
    (cache / "zoo").symlink_to(f"{zoo_cache}/zoo", target_is_directory=True)
    q = lambda items: ",".join(f"'{i}'" for i in items)  # noqa: E731
    data = ["dataset.max_samples={train: 80, val: 40, test: null, ood: null}", "preprocess=smoke"]
    cfg = compose_config("study", [
        f"paths.data_dir={real_data}", f"paths.cache_dir={cache}", "models=[efficientnet_lite0,efficientnet_lite1]",
        "datasets=[brain_tumor]", f"score.overrides=[{q([*data, 'score.names=[logme,leep]', 'extract.progress=false'])}]",
        f"finetune.overrides=[{q([*data, 'finetune=smoke', 'finetune.max_epochs=1', 'finetune.progress=false'])}]",
        "finetune.trials=[1]", "finetune.seeds=[0]", "analyze.overrides=['bootstrap.n=100']",
    ])
    report = run_study(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["default/finetune"])
    assert list(runs["metrics.test/n_leaked"]) == [88.0, 88.0] and runs["metrics.test/bal_acc_clean"].notna().all()
    analysis = mlflow.search_runs(experiment_names=["default/analysis"]).iloc[0]
    assert analysis["tags.leak_effect"] == "brain_tumor"
    acc = pd.read_csv(project / "outputs" / "analysis" / "default" / "leak_effect_accuracy.csv")
    assert set(acc["model"]) == {"efficientnet_lite0", "efficientnet_lite1"}
    assert set(acc["n_test"]) == {394} and set(acc["n_clean"]) == {394 - 88}
    tau = pd.read_csv(project / "outputs" / "analysis" / "default" / "leak_effect_tau.csv")
    assert {"logme", "leep"} <= set(tau["score"]) and set(tau["dataset"]) == {"brain_tumor"}
    assert report.outputs["analysis"].run_id == analysis["run_id"]
