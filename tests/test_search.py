"""The fine-tune search of a study (medxfer.workflows.search): settings, the halving loop on planted results, and
a tiny halving study end to end through the real stages (rungs as cells, resume after a kill between rungs, no
rerun, the protocol on the runs and the analysis, the full-budget cell equal to the grid's)."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medxfer.training.halving import HalvingError, halving
from medxfer.workflows.search import SearchConfigError, run_halving, search_settings, search_state

from conftest import compose_config

# A planted quality per point: the search must end at point 5 (the best), whatever the rung.
QUALITY = {0: 0.30, 1: 0.55, 2: 0.40, 3: 0.62, 4: 0.35, 5: 0.90, 6: 0.50, 7: 0.45, 8: 0.58}


def _planted(point: int, rung: int) -> dict[str, float]:
    # noisy early, exact late: a point's early metric understates it by at most 0.05 per rung to go
    return {"best/val_bal_acc": QUALITY[point] - 0.05 * (2 - rung) * (point % 2), "best/val_loss": 1 - QUALITY[point]}


@pytest.mark.parametrize("ft, message", [
    ({"search": "hyperband", "trials": [0, 1]}, "finetune.search='hyperband'"),
    ({"search": "halving", "trials": [0, 1], "seeds": [0, 0]}, "finetune.seeds lists a seed twice"),
    ({"search": "halving", "trials": [0, 1], "halving": {"eta": 3, "rungs": 2}}, "unknown key(s) ['rungs']"),
])
def test_search_settings_name_the_option_at_fault(ft, message):
    with pytest.raises(SearchConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        search_settings(ft)


def test_halving_settings_are_checked_before_anything_runs():
    with pytest.raises(HalvingError, match="eta"):
        search_settings({"search": "halving", "trials": [0, 1], "halving": {"eta": 1}})
    with pytest.raises(HalvingError, match="twice"):
        search_settings({"search": "halving", "trials": [3, 3]})


def test_the_protocol_is_stated_as_tags_and_one_title():
    grid = search_settings({"trials": [1], "seeds": [0, 1]})
    assert grid.kind == "grid" and grid.protocol(2)["search"] == "grid"
    assert grid.title(2) == "grid search: 1 Halton point x 2 epochs, 2 seeds"
    h = search_settings({"search": "halving", "trials": list(range(9)), "seeds": [0, 1], "halving": {"eta": 3}})
    tags = h.protocol(9)
    assert tags["search_budgets"] == "1,3,9" and tags["search_eta"] == "3" and tags["search_seeds"] == "0,1"
    # 9 points x 1 epoch + 3 x 2 more + 1 x 6 more = 21 of the grid's 81
    assert tags["search_epochs"] == "21 of 81" and tags["search_protocol"] == h.title(9)
    assert "successive halving (eta 3, rungs at 1/3/9 epochs) over 9 Halton points" in h.title(9)


def test_run_halving_keeps_the_planted_best_point_and_discards_the_others():
    h = halving(range(9), max_epochs=9, eta=3)
    trained, discarded = [], []

    def train(point, rung):
        trained.append((point, rung))
        return _planted(point, rung), f"folder-{point}"

    state = run_halving(h, train, discard=discarded.append, label="m@d", wait_s=0)
    assert state.selected == 5
    assert [r for _, r in trained] == [0] * 9 + [1] * 3 + [2]  # 9 points, then 3, then 1
    assert {p for p, r in trained if r == 1} == {5, 3, 8} and (5, 2) in trained  # the best third of each rung
    # every point left behind loses its checkpoints once its rung is finished; the selected one keeps them
    assert sorted(discarded) == sorted(f"folder-{p}" for p in range(9) if p != 5)


def test_run_halving_waits_for_a_point_another_process_trains():
    h = halving([0, 1, 2], max_epochs=3, eta=3)
    asked: dict[tuple[int, int], int] = {}

    def train(point, rung):
        asked[point, rung] = asked.get((point, rung), 0) + 1
        if (point, rung) == (1, 0) and asked[point, rung] < 3:
            return None, None  # claimed by another process: no result yet
        return {"best/val_bal_acc": [0.2, 0.9, 0.4][point], "best/val_loss": 0.5}, None

    state = run_halving(h, train, discard=lambda folder: None, label="m@d", wait_s=0)
    assert state.selected == 1 and asked[1, 0] == 3 and asked[0, 0] == 1  # asked again only for the held point


def test_search_state_reads_the_search_rung_by_rung():
    h = halving(range(9), max_epochs=9, eta=3)
    done = {(p, 0) for p in range(9)} | {(5, 1), (3, 1)}
    state = search_state(h, lambda p, r: _planted(p, r) if (p, r) in done else None)
    assert state.rung == 1 and state.pending == [8] and state.selected is None
    done |= {(8, 1), (5, 2)}
    state = search_state(h, lambda p, r: _planted(p, r) if (p, r) in done else None)
    assert state.rung is None and state.selected == 5


def test_a_diverged_point_counts_last():
    h = halving([0, 1, 2], max_epochs=3, eta=3)
    metrics = {0: {}, 1: {"best/val_bal_acc": 0.4, "best/val_loss": 1.0}, 2: {"best/val_bal_acc": math.nan}}
    state = run_halving(h, lambda p, r: (metrics[p], None), discard=lambda f: None, label="m@d", wait_s=0)
    assert state.selected == 1


# --- end to end, through the real fine-tune stage ---------------------------------------------------------------

TINY_STAGE = [
    "dataset.synthetic.n_per_class=12", "dataset.synthetic.image_size=48", "dataset.synthetic.progress=false",
    "dataset.ood.synthetic.n_per_class=6", "dataset.ood.synthetic.image_size=48", "dataset.ood.synthetic.progress=false",
    "dataset.split.val=0.15", "dataset.split.test=0.15", "preprocess.input_size=64",
]
MODELS = ["efficientnet_lite0", "efficientnet_lite1"]


def _q(items):
    return ",".join(f"'{i}'" for i in items)


def _study(shared_data_dir, search):
    score = [*TINY_STAGE, "extract.progress=false", "score.names=[logme,leep]"]
    finetune = [*TINY_STAGE, "finetune=smoke", "finetune.max_epochs=3", "finetune.progress=false", "ood_scores=[]"]
    return compose_config("study", [
        f"paths.data_dir={shared_data_dir}", f"models=[{','.join(MODELS)}]", "datasets=[synthetic_derm]",
        f"score.overrides=[{_q(score)}]", f"finetune.overrides=[{_q(finetune)}]", "finetune.trials=[0,1,2]",
        "finetune.seeds=[0,1]", f"finetune.search={search}", "analyze.overrides=['bootstrap.n=50']",
    ])


def _finetune_runs(project) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=["default/finetune"])


@pytest.mark.slow
def test_halving_study_resumes_after_a_kill_between_rungs_and_reruns_nothing(project, shared_data_dir, monkeypatch):
    from medxfer.stages import finetune
    from medxfer.workflows.grid import StudyGrid
    from medxfer.workflows.study import run_study

    real, calls = finetune.run_finetune, []

    def killed_after_the_first_rung(cfg, **kwargs):
        if len(calls) == 3:  # the 3 points of the first model's first rung have finished
            raise KeyboardInterrupt("killed between rungs")
        calls.append(cfg.trial)
        return real(cfg, **kwargs)

    monkeypatch.setattr(finetune, "run_finetune", killed_after_the_first_rung)
    with pytest.raises(KeyboardInterrupt):
        run_study(_study(shared_data_dir, "halving"))
    monkeypatch.setattr(finetune, "run_finetune", real)
    first = _finetune_runs(project)
    assert list(first["status"]) == ["FINISHED"] * 3 and set(first["tags.stop_epoch"]) == {"1"}

    report = run_study(_study(shared_data_dir, "halving"))
    # per model: 3 points to epoch 1, the best to epoch 3, then that point at seed 1; the first rung of the first
    # model was found, not trained again
    assert report.counts["finetune"] == {"skipped": 3, "ran": 7}
    runs = _finetune_runs(project)
    assert set(runs["status"]) == {"FINISHED"} and runs["tags.cell"].is_unique  # one result per rung, no repeat
    for model in MODELS:
        mine = runs[runs["tags.model"] == model]
        rungs = mine[mine["tags.stop_epoch"].notna()]
        full = mine[mine["tags.stop_epoch"].isna()]
        assert sorted(rungs["tags.trial"]) == ["0", "1", "2"] and set(rungs["tags.search_rung"]) == {"1/2"}
        assert len(full) == 2 and full["tags.trial"].nunique() == 1 and sorted(full["tags.seed"]) == ["0", "1"]
        chosen = full["tags.trial"].iloc[0]
        best_rung = rungs.sort_values(["metrics.best/val_bal_acc", "metrics.best/val_loss"],
                                      ascending=[False, True]).iloc[0]
        assert best_rung["tags.trial"] == chosen  # the point that went on is the first rung's best
        searched = full[full["tags.seed"] == "0"].iloc[0]
        assert searched["tags.resumed_from_epoch"] == "1"  # went on from its first rung's checkpoint
        assert searched["tags.search"] == "halving" and searched["tags.search_budgets"] == "1,3"
        # the full budget is the grid's cell of that trial: a grid study reads it as its own
        grid = StudyGrid(OmegaConf.to_container(_study(shared_data_dir, "grid"), resolve=True))
        assert searched["tags.cell"] in grid.manifest().ids("finetune")
    analysis = mlflow.search_runs(experiment_names=["default/analysis"])
    assert analysis["tags.ground_truth"].iloc[0].startswith("successive halving (eta 3, rungs at 1/3 epochs)")
    manifest = StudyGrid(OmegaConf.to_container(_study(shared_data_dir, "halving"), resolve=True)).manifest()
    assert len(manifest.finetune) == 4 and not manifest.notes  # the selected point at two seeds, per model

    again = run_study(_study(shared_data_dir, "halving"))
    assert again.counts["finetune"] == {"skipped": 10, "ran": 0} and len(_finetune_runs(project)) == len(runs)


@pytest.mark.slow
def test_two_processes_on_one_halving_search_give_one_result_per_rung(project, shared_data_dir):
    """Two ``medxfer-study`` processes on one store at once: the cells' claims split each rung's points between
    them, each waits for the points the other trains, and every rung of every point has one FINISHED run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from medxfer.workflows.study import run_study

    # the data and the score cells first, in this process: the race is about the search, not the generator
    first = OmegaConf.to_container(_study(shared_data_dir, "halving"), resolve=True)
    first["finetune"]["enabled"] = False
    first["analyze"]["enabled"] = False
    run_study(OmegaConf.create(first))
    score = [*TINY_STAGE, "extract.progress=false", "score.names=[logme,leep]"]
    finetune = [*TINY_STAGE, "finetune=smoke", "finetune.max_epochs=3", "finetune.progress=false", "ood_scores=[]"]
    cmd = [str(Path(sys.executable).parent / "medxfer-study"), f"paths.data_dir={shared_data_dir}",
           f"models=[{','.join(MODELS)}]", "datasets=[synthetic_derm]", f"score.overrides=[{_q(score)}]",
           f"finetune.overrides=[{_q(finetune)}]", "finetune.trials=[0,1,2]", "finetune.seeds=[0,1]",
           "finetune.search=halving", "analyze.enabled=false"]
    env = {**os.environ, "MEDXFER_ROOT": str(project), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    runs = _finetune_runs(project)
    assert set(runs["status"]) == {"FINISHED"} and runs["tags.cell"].is_unique, runs[["tags.mlflow.runName", "status"]]
    # per model: 3 points to epoch 1, one to epoch 3, that one at seed 1; each trained by one of the two
    assert len(runs) == 2 * 5
    both = "\n".join(outputs)
    assert both.count(": starting") + both.count(": resuming from") == 10, both[-4000:]
