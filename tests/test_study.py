"""medxfer-study end to end on tiny settings: scores, fine-tuning, analysis; a second run skips everything."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from medxfer.workflows.study import run_study

from conftest import compose_config

TINY_STAGE = [
    "dataset.synthetic.n_per_class=12", "dataset.synthetic.image_size=48", "dataset.synthetic.progress=false",
    "dataset.ood.synthetic.n_per_class=6", "dataset.ood.synthetic.image_size=48", "dataset.ood.synthetic.progress=false",
    "dataset.split.val=0.15", "dataset.split.test=0.15",  # as conftest's TINY: 24 images leave 16 to train on
    "preprocess.input_size=64",
]


def _quoted(items):
    return ",".join(f"'{i}'" for i in items)


def _study_cfg(shared_data_dir, *extra):
    score = [*TINY_STAGE, "extract.progress=false", "score=all"]
    finetune = [*TINY_STAGE, "finetune=smoke", "finetune.max_epochs=1", "finetune.progress=false"]
    return compose_config("study", [
        f"paths.data_dir={shared_data_dir}",
        "models=[efficientnet_lite0,efficientnet_lite1]", "datasets=[synthetic_derm,synthetic_mri]",
        f"score.overrides=[{_quoted(score)}]", f"finetune.overrides=[{_quoted(finetune)}]",
        "finetune.trials=[0,1]", "finetune.seeds=[0]", "analyze.overrides=['bootstrap.n=100']", *extra,
    ])


@pytest.mark.slow
def test_study_end_to_end_then_resumes(project, shared_data_dir):
    report = run_study(_study_cfg(shared_data_dir))
    assert report.counts["score"] == {"skipped": 0, "ran": 8}
    assert report.counts["finetune"] == {"skipped": 0, "ran": 8}
    analysis = report.outputs["analysis"]
    # each figure as PNG and PDF: the tau heatmap, and the correlation panels in and out of distribution, split
    # into parts of at most 8 score columns (18 scores here)
    stems = {p.stem for p in analysis.figures}
    assert sorted(p.name for p in analysis.figures) == sorted(f"{s}{x}" for s in stems for x in (".png", ".pdf"))
    assert "tau_heatmap" in stems
    for kind in ("iid", "ood"):
        parts = {s for s in stems if s.startswith(f"correlation_{kind}")}
        assert parts == {f"correlation_{kind}_part{i}" for i in range(1, len(parts) + 1)} and len(parts) >= 3, parts
    assert set(analysis.iid["dataset"]) == {"synthetic_derm", "synthetic_mri", "ALL"}
    # every registered scorer (the paper's seven and the later eight) and the ensembles, in and out of distribution
    from medxfer.scores import available_scores

    expected = set(available_scores(include_opt_in=True)) | {"ens_rank", "ens_z", "ens_linear"}
    assert len(expected) == 18
    # in distribution, next to them, the dataset-agnostic baselines (static_rank, n_params)
    from medxfer.analysis.baselines import BASELINES

    assert set(analysis.iid["score"]) == expected | set(BASELINES) and set(analysis.ood["score"]) == expected
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    ft = mlflow.search_runs(experiment_names=["default/finetune"])
    assert len(ft) == 8 and set(ft["status"]) == {"FINISHED"}
    again = run_study(_study_cfg(shared_data_dir))
    assert again.counts["score"]["ran"] == 0 and again.counts["finetune"]["ran"] == 0
    # an extra run with other settings in the same study (here 96 px instead of 64) is not read by the analysis,
    # nor are the user's own data (the cells-and-manifest contract): same table, same taus
    from medxfer.stages.score import run_score

    run_score(compose_config("score", [f"paths.data_dir={shared_data_dir}", "model=efficientnet_lite0",
                                       "dataset=synthetic_derm", *TINY_STAGE, "extract.progress=false", "score=all",
                                       "preprocess.input_size=96"]))
    third = run_study(_study_cfg(shared_data_dir))
    assert third.counts["score"]["ran"] == 0
    later = third.outputs["analysis"]
    pd.testing.assert_frame_equal(later.iid, analysis.iid)
