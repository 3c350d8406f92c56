"""One trial-selection rule for the analysis and for finetune.keep=best."""

from __future__ import annotations

import pandas as pd

from medxfer.analysis.selection import select_trials, selected_run


def _runs(rows):
    return pd.DataFrame([{"run_id": r, "tags.model": "m", "tags.dataset": "d", "tags.trial": str(t),
                          "tags.seed": str(s), "metrics.best/val_bal_acc": acc, "metrics.best/val_loss": loss,
                          "start_time": pd.Timestamp(start, unit="s")} for r, t, s, acc, loss, start in rows])


def test_a_tie_goes_to_the_lower_loss_then_the_lower_trial_and_both_users_agree():
    tie = _runs([("r3", 3, 0, 0.8, 0.5, 1), ("r1", 1, 0, 0.8, 0.5, 2), ("r2", 2, 0, 0.8, 0.6, 0)])
    assert list(select_trials(tie)["run_id"]) == ["r1"]  # the analysis
    assert selected_run(tie) == "r1"  # keep=best keeps this run's checkpoint
    lower_loss = _runs([("r3", 3, 0, 0.8, 0.4, 1), ("r1", 1, 0, 0.8, 0.5, 2)])
    assert selected_run(lower_loss) == "r3" and list(select_trials(lower_loss)["run_id"]) == ["r3"]


def test_seed_replicates_are_averaged_before_choosing_and_all_of_them_are_kept():
    runs = _runs([("a0", 1, 0, 0.9, 0.3, 0), ("a1", 1, 1, 0.5, 0.3, 1),   # trial 1: mean 0.70
                  ("b0", 2, 0, 0.8, 0.3, 2), ("b1", 2, 1, 0.8, 0.3, 3)])  # trial 2: mean 0.80
    chosen = select_trials(runs)
    assert sorted(chosen["run_id"]) == ["b0", "b1"]
    # a rerun of the same trial and seed (force=true): the original run keeps its checkpoint
    rerun = _runs([("orig", 1, 0, 0.7, 0.3, 0), ("again", 1, 0, 0.7, 0.3, 5)])
    assert selected_run(rerun) == "orig"
