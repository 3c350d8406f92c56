"""The analysis stage reads the study back from MLflow, picks trials, correlates, logs tables and figures."""

from __future__ import annotations

import re
import shutil

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medxfer.analysis import AnalysisError, EnsembleWarning, add_ensembles, correlate, parse_ensembles
from medxfer.analysis.baselines import BASELINES, add_baselines
from medxfer.stages.analyze import IncompleteStudy
from medxfer.workflows.study import analyze_study
from medxfer.tracking import logged_model_name

from conftest import compose_config, png_width


ENSEMBLES = parsENSEMBLES = parse_ensembles({"ens_rank": {"kind": "rank"}, "ens_z": {"kind": "zscore"}, "ens_linear": {"kind": "linear"}})


def _expected_tables(root, scores) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """The long tables the analysis should build, read here straight from the runs the stages logged: each
    (model, dataset)'s training-split score run, joined with the fine-tune trial of highest best/val_bal_acc
    (ties: the lower best/val_loss, then the lower trial number); OOD: that trial's ood_score/<name> against its
    ood/bal_acc. One seed per trial, so the means over seed replicates are the values themselves. Also each
    model's backbone parameter count (the ``n_params`` baseline) as its fine-tune runs logged it."""
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    finished = "attributes.status = 'FINISHED'"
    score_runs = mlflow.search_runs(experiment_names=["default/score"], filter_string=finished)
    score_runs = score_runs[score_runs["tags.split"] != "ood"]
    ft = mlflow.search_runs(experiment_names=["default/finetune"], filter_string=finished)
    ft = ft.assign(trial=ft["params.trial"].astype(int))
    selected = (ft.sort_values(["metrics.best/val_bal_acc", "metrics.best/val_loss", "trial"],
                               ascending=[False, True, True])
                .drop_duplicates(["tags.model", "tags.dataset"]).set_index(["tags.model", "tags.dataset"]))
    iid = [{"dataset": r["tags.dataset"], "model": r["tags.model"], "score": s, "value": r[f"metrics.score/{s}"],
            "target": selected.loc[(r["tags.model"], r["tags.dataset"]), "metrics.test/bal_acc"]}
           for _, r in score_runs.iterrows() for s in scores]
    ood = [{"dataset": d, "model": m, "score": s, "value": r[f"metrics.ood_score/{s}"], "target": r["metrics.ood/bal_acc"]}
           for (m, d), r in selected.iterrows() for s in scores]
    n_params = {m: float(r["params.n_params"]) for (m, _), r in selected.iterrows()}
    return pd.DataFrame(iid), pd.DataFrame(ood), n_params


def test_the_session_study_holds_the_real_runs_it_promises(tracked_study):
    mlflow.set_tracking_uri(f"sqlite:///{tracked_study.root}/mlruns/mlflow.db")
    n_cells = len(tracked_study.models) * len(tracked_study.datasets)
    score = mlflow.search_runs(experiment_names=["default/score"])
    ft = mlflow.search_runs(experiment_names=["default/finetune"])
    assert len(score) == 2 * n_cells and len(ft) == len(tracked_study.trials) * n_cells
    assert set(score["status"]) == set(ft["status"]) == {"FINISHED"}
    assert set(score["tags.model"]) == set(ft["tags.model"]) == set(tracked_study.models)
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(tracked_study.models)
    # real numbers: every score differs between models, accuracies are balanced accuracies
    for s in tracked_study.scores:
        assert score.groupby("tags.dataset")[f"metrics.score/{s}"].nunique().min() > 1, s
    assert ft["metrics.test/bal_acc"].between(0, 1).all() and ft["metrics.ood/bal_acc"].between(0, 1).all()
    print(f"tracked_study took {tracked_study.seconds:.0f} s")


def test_analysis_of_a_tracked_study(study_project, tracked_study):
    scores = tracked_study.scores
    result = analyze_study(tracked_study.analyze_config("bootstrap.n=100"))
    iid_table, ood_table, n_params = _expected_tables(study_project, scores)
    # the data-blind baselines are appended after the ensembles (they are never part of one), in distribution only
    with_baselines, _ = add_baselines(add_ensembles(iid_table, ENSEMBLES).table, n_params)
    expected = correlate(with_baselines, n_boot=100)
    pd.testing.assert_frame_equal(result.iid.reset_index(drop=True), expected)
    ood_expected = correlate(add_ensembles(ood_table, ENSEMBLES).table, n_boot=100)
    pd.testing.assert_frame_equal(result.ood.reset_index(drop=True), ood_expected)
    assert set(result.ood.score) == {*scores, "ens_rank", "ens_z", "ens_linear"}

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "analysis"
    ex = expected.set_index(["dataset", "score"])
    d1, d2 = tracked_study.datasets
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith(("tau/", "wtau/"))}
    # every defined correlation is logged, and nothing else
    assert logged == pytest.approx({f"{stat}/{d}/{s}": row[stat] for (d, s), row in ex.iterrows()
                                    for stat in ("tau", "wtau") if pd.notna(row[stat])})
    assert f"tau/ALL/{scores[0]}" in logged and f"ood_tau/{d2}/{scores[-1]}" in run.data.metrics
    for name in ("ens_rank", "ens_z", "ens_linear"):
        assert f"wtau/ALL/{name}" in run.data.metrics and f"ood_tau/ALL/{name}" in run.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "figures")}
    assert {f"figures/correlation_{k}.{e}" for k in ("iid", "ood") for e in ("png", "pdf")} <= arts
    tables = {a.path for a in MlflowClient().list_artifacts(result.run_id, "tables")}
    assert {"tables/correlations_iid.csv", "tables/table_iid.csv", "tables/ensemble_weights.csv"} <= tables
    assert all(p.is_file() and p.stat().st_size > 1000 for p in result.figures)
    # the CSV tables and the figures (one column per score and ensemble: 2.3 in each at 150 dpi) have the ensembles
    out = result.figures[0].parent
    assert {"ens_rank", "ens_z", "ens_linear"} <= set(pd.read_csv(out / "correlations_iid.csv").score)
    assert {"ens_rank", "ens_z", "ens_linear"} <= set(pd.read_csv(out / "correlations_ood.csv").score)
    # one column per score and ensemble, and in distribution one per baseline too: the iid figure is the wider
    widths = {p.stem: png_width(p) for p in result.figures if p.suffix == ".png" and p.stem.startswith("correlation_")}
    assert widths["correlation_iid"] > widths["correlation_ood"] > round((2.3 * (len(scores) + 3)) * 150)
    weights = pd.read_csv(MlflowClient().download_artifacts(result.run_id, "tables/ensemble_weights.csv"))
    assert list(weights.columns) == ["split", "ensemble", "held_out", "n_train", "alpha",
                                     *(f"weight/{s}" for s in scores)]
    assert set(zip(weights.split, weights.held_out)) == {(s, h) for s in ("iid", "ood") for h in (d1, d2, "none")}
    pd.testing.assert_frame_equal(weights, result.weights, check_dtype=False)


def test_selected_trials_become_mlflow_models_once(study_project, tracked_study, capsys):
    mlflow.set_tracking_uri(f"sqlite:///{study_project}/mlruns/mlflow.db")
    client = MlflowClient()
    ft = mlflow.search_runs(experiment_names=["default/finetune"], filter_string="attributes.status = 'FINISHED'")
    selected = (ft.assign(trial=ft["params.trial"].astype(int))
                .sort_values(["metrics.best/val_bal_acc", "metrics.best/val_loss", "trial"], ascending=[False, True, True])
                .drop_duplicates(["tags.model", "tags.dataset"]))
    # one selected trial whose checkpoint is gone: named, not logged
    gone = selected.iloc[0]
    client.set_tag(gone["run_id"], "checkpoint_path", str(study_project / "deleted.ckpt"))
    analyze_study(tracked_study.analyze_config("bootstrap.n=20", "mlflow_models.register=true"))
    out = capsys.readouterr().out
    assert f"1 selected trial(s) have no checkpoint on disk" in out and gone["tags.mlflow.runName"] in out
    assert f"{len(selected) - 1} checkpoint(s) logged as MLflow models, {len(selected) - 1} registered" in out
    experiment = client.get_experiment_by_name("default/finetune").experiment_id
    models = client.search_logged_models(experiment_ids=[experiment])
    assert len(models) == len(selected) - 1
    for _, want in selected.iloc[1:].iterrows():
        run = client.get_run(want["run_id"])
        model = client.get_logged_model(run.data.tags["logged_model_id"])
        assert model.source_run_id == want["run_id"] and model.name == logged_model_name(want["tags.mlflow.runName"])
        assert model.tags["checkpoint_digest"] == want["tags.checkpoint_digest"]
        assert model.params["trial"] == want["params.trial"]
        assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
        name = f"default.{want['tags.model']}.{want['tags.dataset']}"
        assert run.data.tags["registered_model"] == f"{name}/1"
        assert client.get_model_version(name, "1").source == f"models:/{model.model_id}"
    assert "logged_model_id" not in client.get_run(gone["run_id"]).data.tags
    # a second analysis adds no model and no version
    analyze_study(tracked_study.analyze_config("bootstrap.n=20", "mlflow_models.register=true"))
    assert len(client.search_logged_models(experiment_ids=[experiment])) == len(selected) - 1
    assert "logged as MLflow models" not in capsys.readouterr().out


def test_the_same_analysis_of_the_same_runs_is_reused_not_repeated(study_project, tracked_study, capsys):
    first = analyze_study(tracked_study.analyze_config("bootstrap.n=20"))
    figures_dir = first.figures[0].parent
    drawn = {p.name: p.read_bytes() for p in figures_dir.iterdir()}
    shutil.rmtree(figures_dir)  # a user cleans outputs/, or another analysis draws there
    capsys.readouterr()
    again = analyze_study(tracked_study.analyze_config("bootstrap.n=20"))
    out = capsys.readouterr().out
    assert again.run_id == first.run_id and f"up to date: analysis run {first.run_id}" in out and "tau table" in out
    pd.testing.assert_frame_equal(again.iid, first.iid)
    pd.testing.assert_frame_equal(again.ood, first.ood)
    pd.testing.assert_frame_equal(again.weights, first.weights, check_dtype=False)
    assert sorted(p.name for p in again.figures) == sorted(p.name for p in first.figures)
    assert {p.name: p.read_bytes() for p in figures_dir.iterdir()} == drawn  # figures and tables are back
    analyses = mlflow.search_runs(experiment_names=["default/analysis"])
    assert len(analyses) == 1
    # other settings, or force=true, analyse again
    other = analyze_study(tracked_study.analyze_config("bootstrap.n=30"))
    forced = analyze_study(tracked_study.analyze_config("bootstrap.n=20", "force=true"))
    assert len({first.run_id, other.run_id, forced.run_id}) == 3
    assert len(mlflow.search_runs(experiment_names=["default/analysis"])) == 3


def test_an_analysis_is_identified_by_the_runs_it_read_and_its_settings():
    from medxfer.cells import analysis_cell_id

    base = analysis_cell_id("m1", ["r1", "r2"], {"bootstrap": {"n": 20}})
    assert analysis_cell_id("m1", ["r2", "r1"], {"bootstrap": {"n": 20}}) == base  # order of reading is not identity
    assert analysis_cell_id("m1", ["r1", "r3"], {"bootstrap": {"n": 20}}) != base  # a cell run again (forced)
    assert analysis_cell_id("m2", ["r1", "r2"], {"bootstrap": {"n": 20}}) != base
    assert analysis_cell_id("m1", ["r1", "r2"], {"bootstrap": {"n": 30}}) != base


def test_run_names_become_valid_model_names():
    # MLflow refuses "." in a LoggedModel name, and a seed replicate's run name has one
    assert logged_model_name("lite0@synthetic_derm#trial1.s1") == "lite0@synthetic_derm#trial1_s1"
    assert logged_model_name("a/b:c%d'e\"f") == "a_b_c_d_e_f"


def test_ensembles_can_be_switched_off_or_restricted(study_project, tracked_study):
    scores = tracked_study.scores
    plain = analyze_study(tracked_study.analyze_config("bootstrap.n=20", "ensembles=null"))
    assert set(plain.iid.score) == {*scores, *BASELINES} and plain.weights.empty
    only = analyze_study(tracked_study.analyze_config("bootstrap.n=20", "~ensembles.ens_linear", "~ensembles.ens_z",
                                                    "ensembles.ens_rank.scores=[logme]"))
    assert set(only.iid.score) == {*scores, *BASELINES, "ens_rank"}
    ex = only.iid.set_index(["dataset", "score"])
    # a rank ensemble of one score is that score's ranking
    for d in (*tracked_study.datasets, "ALL"):
        assert ex.loc[(d, "ens_rank"), "tau"] == pytest.approx(ex.loc[(d, "logme"), "tau"], nan_ok=True)


def test_ensemble_config_errors_stop_before_any_run(study_project, tracked_study):
    available = re.escape(str(sorted(tracked_study.scores)))
    with pytest.raises(AnalysisError, match=r"score\(s\) \['gbc'\] not in the in-distribution table; available: " + available):
        analyze_study(tracked_study.analyze_config("ensembles.ens_rank.scores=[logme,gbc]"))
    with pytest.raises(AnalysisError, match=r"unknown kind 'median'"):
        analyze_study(tracked_study.analyze_config("ensembles.ens_rank.kind=median"))
    mlflow.set_tracking_uri(f"sqlite:///{study_project}/mlruns/mlflow.db")
    assert mlflow.get_experiment_by_name("default/analysis") is None


def test_one_dataset_study_skips_the_linear_ensemble_with_a_warning(study_project, tracked_study):
    with pytest.warns(EnsembleWarning, match="ens_linear.*skipped: leave-one-dataset-out needs >= 2 datasets"):
        result = analyze_study(tracked_study.analyze_config("bootstrap.n=20", datasets=tracked_study.datasets[:1]))
    assert {"ens_rank", "ens_z"} <= set(result.iid["score"]) and "ens_linear" not in set(result.iid["score"])
    assert set(result.iid["dataset"]) == {tracked_study.datasets[0], "ALL"}


def test_incomplete_study_lists_missing_cells(study_project, tracked_study):
    # a user deletes the runs of one cell: the analysis names each missing run instead of analysing less
    model, dataset = tracked_study.models[-1], tracked_study.datasets[1]
    mlflow.set_tracking_uri(f"sqlite:///{study_project}/mlruns/mlflow.db")
    client = MlflowClient()
    cell = f"tags.model = '{model}' and tags.dataset = '{dataset}'"
    for experiment in ("default/score", "default/finetune"):
        for run_id in mlflow.search_runs(experiment_names=[experiment], filter_string=cell)["run_id"]:
            client.delete_run(run_id)
    with pytest.raises(IncompleteStudy) as err:
        analyze_study(tracked_study.analyze_config("bootstrap.n=50"))
    named = [f"score run {model}@{dataset}/train", f"score run {model}@{dataset}/ood",
             *(f"fine-tune run {model}@{dataset}#trial{t}" for t in tracked_study.trials)]
    assert f"missing {len(named)} run(s)" in str(err.value) and all(f"\n  {n}" in str(err.value) for n in named)
    result = analyze_study(tracked_study.analyze_config("bootstrap.n=50", "allow_incomplete=true"))
    assert result.missing and set(result.iid[result.iid.dataset == dataset].n) == {len(tracked_study.models) - 1}


def test_runs_tracked_before_cell_schema_2_are_read_with_legacy_true(study_project, tracked_study):
    """A store written before cells were keyed by content (no cell tags, training split named ``iid``): the
    manifest finds none of its cells, and ``legacy=true`` reads the runs the old way, to the same table."""
    import sqlite3

    current = analyze_study(tracked_study.analyze_config("bootstrap.n=50"))
    con = sqlite3.connect(study_project / "mlruns" / "mlflow.db")
    with con:  # what a schema-1 run carried: no cell id, digests or schema tag, and split iid
        con.execute("DELETE FROM tags WHERE key IN ('cell', 'cell_schema', 'data_digest', 'weights_id')")
        con.execute("UPDATE tags SET value = 'iid' WHERE key = 'split' AND value = 'train'")
    con.close()
    with pytest.raises(IncompleteStudy, match="missing"):
        analyze_study(tracked_study.analyze_config("bootstrap.n=50"))
    legacy = analyze_study(tracked_study.analyze_config("bootstrap.n=50", "legacy=true"))
    pd.testing.assert_frame_equal(legacy.iid.reset_index(drop=True), current.iid.reset_index(drop=True))
    pd.testing.assert_frame_equal(legacy.ood.reset_index(drop=True), current.ood.reset_index(drop=True))
    assert MlflowClient().get_run(legacy.run_id).data.tags["manifest"] == "legacy"


@pytest.mark.parametrize("allow_incomplete", ["true", "false"])
def test_a_study_without_runs_is_a_clear_error_at_once(project, allow_incomplete, monkeypatch):
    import medxfer.workflows.grid

    def forbidden(*a, **k):  # every cell's config and data digest: seconds per cell, for nothing to read
        raise AssertionError("the manifest of a study without runs was composed")

    monkeypatch.setattr(medxfer.workflows.grid.StudyGrid, "manifest", forbidden)
    with pytest.raises(IncompleteStudy, match="study 'nothing' has no FINISHED score or fine-tune run") as err:
        analyze_study(compose_config("analyze", ["study=nothing", f"allow_incomplete={allow_incomplete}"]))
    assert "study=nothing" in err.value.hint
