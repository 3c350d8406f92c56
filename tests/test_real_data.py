"""The real medical images of ../shared/data (or $MEDXFER_SHARED_DATA; skipped when absent): what medxfer-data
reports of them (the leaks of the published splits, the absent NINS set), and a fast score of two zoo models on a
small stratified subset of BrainTumor, without its OOD set."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medxfer.stages.data import run_data

from conftest import compose_config


def _report(real_data, dataset: str):
    return run_data(compose_config("data", [f"dataset={dataset}", f"paths.data_dir={real_data}", "images=none"]))


def test_brain_tumor_leaks_are_reported_and_the_absent_nins_set_is_not_a_problem(real_data):
    report = _report(real_data, "brain_tumor")
    assert {s: sum(report.counts[s].values()) for s in ("train", "val", "test")} == {"train": 2440, "val": 430, "test": 394}
    assert report.counts["ood"] is None and report.absent["ood"].startswith("OOD set nins: all 2,051 files missing")
    assert report.problems == []
    # ../shared/data/README.md: 81 of the 394 test and 19 of the 430 validation images are training images
    assert report.leaks["identical"]["test_in_train"] == 81
    assert report.leaks["identical"]["val_in_train"] == 19
    assert report.leaks["train_copies"] == 72 and report.leaks["policy"] == "keep"


def test_isic2019_ham10000_reports_the_lesions_test_shares_with_train(real_data):
    report = _report(real_data, "isic2019_ham10000")
    assert {s: report.counts[s] for s in ("train", "val", "test")} == {
        "train": {"not_melanoma": 1781, "melanoma": 718}, "val": {"not_melanoma": 439, "melanoma": 61},
        "test": {"not_melanoma": 1924, "melanoma": 113}}
    # ../shared/data/README.md: 295 of the 2,037 test images have a lesion with an image in the training split
    assert report.leaks["groups"]["test_groups_in_train"] == 295
    assert report.groups["column"] == "lesion_id" and report.problems == []


@pytest.mark.parametrize("dataset, counts", [
    ("retinamnist", {"train": 1080, "val": 120, "test": 400}),
    ("breastmnist", {"train": 546, "val": 78, "test": 156}),
])
def test_medmnist_configs_read_the_real_files_with_their_class_names(real_data, dataset, counts):
    report = _report(real_data, dataset)
    assert {s: sum(report.counts[s].values()) for s in counts} == counts
    names = {"retinamnist": ["grade_0", "grade_1", "grade_2", "grade_3", "grade_4"],
             "breastmnist": ["malignant", "normal_or_benign"]}[dataset]
    assert list(report.counts["train"]) == names


# two small models of the default study (conf/grid/default.yaml): a hub model and a registry model with a head
MODELS = ["efficientnet_lite0", "mobilenetv1_100_nudity"]


@pytest.mark.parametrize("model", MODELS)
def test_zoo_models_score_a_stratified_subset_of_brain_tumor(real_data, project, zoo_cache, model):
    import mlflow

    from medxfer.models.fetch import zoo_dir
    from medxfer.stages.score import run_score

    if model != "efficientnet_lite0" and not any((zoo_dir(zoo_cache) / "converted").glob(f"{model}-*.safetensors")):
        pytest.skip(f"{model}'s converted weights are not in the zoo cache {zoo_cache} (medxfer-zoo fetch)")
    cache = project / "cache"
    cache.mkdir()
    # features stay in this test's folder; converted zoo weights are shared, never fetched here
    (cache / "zoo").symlink_to(Path(zoo_cache) / "zoo", target_is_directory=True)
    cfg = compose_config("score", [
        f"model={model}", "dataset=brain_tumor", f"paths.data_dir={real_data}", f"paths.cache_dir={cache}",
        "preprocess=smoke", "score.names=[logme,leep]", "dataset.max_samples={train: 64}", "extract.progress=false",
        "extract.decoded_cache=false",
    ])
    t0 = time.perf_counter()
    results = run_score(cfg)
    print(f"{model}: {time.perf_counter() - t0:.1f}s")
    # the default splits [train, ood]: the NINS set is not there, so only the training split is scored
    assert [r.split for r in results] == ["train"] and not results[0].skipped
    values = results[0].scores
    assert set(values) == {"logme", "leep"} and all(v == v for v in values.values())
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["default/score"], output_format="list")
    tags, params = run.data.tags, run.data.params
    assert int(params["n_samples"]) <= 64 + 4  # a stratified subset: every class keeps a row
    assert tags["absent_splits"] == "ood" and "OOD metrics are not computed" in tags["absent/ood"]
    assert (tags["leak/policy"], tags["leak/test_in_train"], tags["leak/val_in_train"]) == ("keep", "81", "19")


@pytest.mark.slow
def test_the_medical_experiment_runs_end_to_end_on_real_images_and_a_rerun_adds_no_run(real_data, project, zoo_cache):
    """``experiment=medical`` on a reduced grid (two models x BrainTumor and BreastMNIST, capped training sets):
    scores, the halving search, the analysis with the leak's effect; then again, adding no run."""
    import mlflow

    from medxfer.workflows.study import run_study

    cache = project / "cache"
    cache.mkdir()
    (cache / "zoo").symlink_to(Path(zoo_cache) / "zoo", target_is_directory=True)
    q = lambda items: ",".join(f"'{i}'" for i in items)  # noqa: E731
    caps = "dataset.max_samples={train: 60, val: 40, test: null, ood: null}"
    overrides = [
        "experiment=medical", f"paths.data_dir={real_data}", f"paths.cache_dir={cache}",
        "models=[efficientnet_lite0,efficientnet_lite1]", "datasets=[brain_tumor,breastmnist]",
        f"score.overrides=[{q(['score.names=[logme,leep]', 'preprocess=smoke', 'extract.progress=false', caps])}]",
        f"finetune.overrides=[{q(['finetune=smoke', 'finetune.progress=false', caps])}]",
        "analyze.overrides=['bootstrap.n=100']",
    ]
    report = run_study(compose_config("study", overrides))
    # per (model, dataset): 3 points to epoch 1, the best to epoch 3, that point at seed 1
    assert report.counts["finetune"] == {"skipped": 0, "ran": 4 * 5}
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    finetune = mlflow.search_runs(experiment_names=["medical/finetune"])
    assert set(finetune["status"]) == {"FINISHED"} and set(finetune["tags.search"]) == {"halving"}
    analysis = mlflow.search_runs(experiment_names=["medical/analysis"]).iloc[0]
    assert analysis["tags.ground_truth"].startswith("successive halving (eta 3, rungs at 1/3 epochs) over 3 Halton")
    assert analysis["tags.leak_effect"] == "brain_tumor"  # BreastMNIST's official split does not leak by bytes
    result = report.outputs["analysis"]
    assert set(result.iid["dataset"]) == {"brain_tumor", "breastmnist", "ALL"} and not result.missing

    again = run_study(compose_config("study", overrides))
    assert again.counts == {"score": {"skipped": 4, "ran": 0}, "finetune": {"skipped": 20, "ran": 0}}
    assert len(mlflow.search_runs(experiment_names=["medical/finetune"])) == len(finetune)
