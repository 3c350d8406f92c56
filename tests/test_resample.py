"""Draws of the user's images for rank intervals (medxfer.scores.resample): halves without replacement by
default, because draws with replacement move a fit-based score such as LogME into another regime."""

from __future__ import annotations

import numpy as np
import pytest

from medxfer.scores.compute import compute_scores
from medxfer.scores.resample import resampled_scores, stratified_draws


def test_half_draws_take_half_of_each_class_once():
    labels = np.array([0] * 9 + [1] * 4 + [2] * 2)
    for rows in stratified_draws(labels, 20, seed=1, draw="half"):
        assert len(set(rows)) == len(rows)  # no image twice
        assert np.bincount(labels[rows]).tolist() == [5, 2, 2]  # half, rounded up; a class of 2 keeps both
    first, second = stratified_draws(labels, 2, seed=1, draw="half")
    assert not np.array_equal(first, second)
    assert [r.tolist() for r in stratified_draws(labels, 3, seed=4, draw="half")] == \
        [r.tolist() for r in stratified_draws(labels, 3, seed=4, draw="half")]


def test_an_unknown_draw_is_named():
    with pytest.raises(ValueError, match="draw='jackknife'"):
        stratified_draws(np.array([0, 1]), 1, seed=0, draw="jackknife")


def test_logme_on_halves_stays_in_the_datas_regime_and_bootstrap_draws_do_not():
    rng = np.random.default_rng(0)
    n, d = 300, 900
    labels = rng.integers(0, 4, n)
    features = rng.normal(size=(4, d))[labels] * 0.3 + rng.normal(size=(n, d))
    full = compute_scores(features, labels, None, ["logme"])["logme"]
    halves = [r["logme"] for r in resampled_scores(features, labels, None, ["logme"], n=4, seed=0)]
    boots = [r["logme"] for r in resampled_scores(features, labels, None, ["logme"], n=4, seed=0, draw="bootstrap")]
    # a repeated image reads as a noise-free repeat: the evidence per image jumps by whole nats
    assert min(boots) - full > 2.0
    assert max(abs(h - full) for h in halves) < 0.5
