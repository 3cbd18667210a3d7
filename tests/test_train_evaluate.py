"""Video-level AUC with a bootstrap interval, split by fake kind against held-out reals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.evaluate import (
    EvaluationError,
    auc_from_counts,
    bootstrap_auc,
    evaluate_by_kind,
    format_table,
    held_out_reals,
    log_loss,
    pairwise_wins,
)


def test_resampled_auc_equals_sklearn_on_the_expanded_sample() -> None:
    rng = np.random.default_rng(0)
    fakes, reals = rng.random(7).round(1), rng.random(5).round(1)  # rounding makes ties
    fake_counts, real_counts = rng.multinomial(7, [1 / 7] * 7, size=20), rng.multinomial(5, [1 / 5] * 5, size=20)
    aucs = auc_from_counts(pairwise_wins(fakes, reals), fake_counts, real_counts)
    for d in range(20):
        scores = np.r_[np.repeat(fakes, fake_counts[d]), np.repeat(reals, real_counts[d])]
        truth = np.r_[np.ones(7), np.zeros(5)]
        assert aucs[d] == pytest.approx(roc_auc_score(truth, scores))


def test_separable_scores_give_auc_one_with_a_degenerate_interval() -> None:
    est = bootstrap_auc(np.r_[np.ones(10), np.zeros(10)], np.r_[np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 10)])
    assert (est.auc, est.low, est.high, est.draws) == (1.0, 1.0, 1.0, 2000)


def test_uninformative_scores_interval_covers_one_half_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    y, p = np.r_[np.ones(15), np.zeros(12)], rng.random(27)
    est = bootstrap_auc(y, p, seed=3)
    assert est.auc == pytest.approx(roc_auc_score(y, p))
    assert est.low < 0.5 < est.high and est.low < est.auc < est.high
    assert 0.2 < est.high - est.low < 0.6  # ~27 videos: a wide interval, as it should be
    assert bootstrap_auc(y, p, seed=3) == est and bootstrap_auc(y, p, seed=4) != est


def test_one_class_is_refused() -> None:
    with pytest.raises(EvaluationError, match="both classes"):
        bootstrap_auc(np.ones(4), np.random.default_rng(0).random(4))


def test_constant_half_is_the_baseline_log_loss() -> None:
    assert log_loss(np.r_[1, 0, 1], np.full(3, 0.5)) == pytest.approx(math.log(2))
    assert log_loss(np.r_[1], np.r_[0.0]) == pytest.approx(-math.log(1e-15))  # clipped, finite


LABELS = {
    "swap1.mp4": (1, "fake-face-swap"), "swap2.mp4": (1, "fake-face-swap"),
    "lips.mp4": (1, "fake-lip-sync"),
    "gen1.mp4": (1, "fake-talking-head-generation"), "gen2.mp4": (1, "fake-talking-head-generation"),
    "anna.mp4": (0, "real-talking-head"), "bert.mp4": (0, "real-talking-head"), "trained_on.mp4": (0, "real-talking-head"),
}  # fmt: skip
PREDICTIONS = {"swap1.mp4": 0.9, "swap2.mp4": 0.4, "lips.mp4": 0.3, "gen1.mp4": 0.8, "gen2.mp4": 0.7, "anna.mp4": 0.35, "bert.mp4": 0.5, "trained_on.mp4": 0.01}


def test_rows_per_kind_use_held_out_reals_only() -> None:
    rows = {r.kind: r for r in evaluate_by_kind(PREDICTIONS, LABELS, ["anna", "bert.mp4"], draws=200)}
    assert list(rows) == ["fake-face-swap", "fake-lip-sync", "fake-talking-head-generation", "all"]
    assert all(r.reals == 2 for r in rows.values())
    assert (rows["all"].fakes, rows["fake-lip-sync"].fakes) == (5, 1)
    assert rows["fake-talking-head-generation"].auc.auc == 1.0
    assert rows["fake-lip-sync"].auc.auc == 0.0  # 0.3 below both reals
    assert rows["fake-face-swap"].auc.auc == 0.75  # 0.9 beats both reals, 0.4 only anna (0.35)
    assert rows["all"].baseline_log_loss == pytest.approx(math.log(2)) and rows["all"].baseline_auc == 0.5
    assert "fake-lip-sync" in format_table(list(rows.values()))


def test_held_out_names_may_be_identities_and_must_exist() -> None:
    assert held_out_reals(LABELS, ["person-b"], identities={"bert.mp4": "person-b"}) == ["bert.mp4"]
    with pytest.raises(EvaluationError, match="nobody"):
        held_out_reals(LABELS, ["anna", "nobody"])
