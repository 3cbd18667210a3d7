"""The winner's confident strategy, branch by branch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.aggregation import confident_strategy, get_strategy, mean_strategy


def test_confident_fakes_branch() -> None:
    scores = [0.9] * 12 + [0.1] * 18  # 12 > 30 // 2.5 = 12? no: needs > 12
    assert confident_strategy(scores) == pytest.approx(np.mean(scores))
    scores = [0.9] * 13 + [0.95] * 2 + [0.1] * 15  # 15 > 12 and 15 > 11
    assert confident_strategy(scores) == pytest.approx(np.mean([0.9] * 13 + [0.95] * 2))


def test_needs_more_than_eleven_fakes() -> None:
    scores = [0.9] * 11 + [0.5] * 5  # 11 > 16 // 2.5 but not > 11
    assert confident_strategy(scores) == pytest.approx(np.mean(scores))
    scores = [0.9] * 12 + [0.5] * 5
    assert confident_strategy(scores) == pytest.approx(0.9)


def test_confident_reals_branch() -> None:
    scores = [0.1] * 19 + [0.05] + [0.7]  # 20 of 21 under 0.2 > 0.9 * 21
    assert confident_strategy(scores) == pytest.approx(np.mean([0.1] * 19 + [0.05]))


def test_exactly_ninety_percent_is_not_enough() -> None:
    scores = [0.1] * 9 + [0.7]  # 9 is not > 9.0
    assert confident_strategy(scores) == pytest.approx(np.mean(scores))


def test_mean_branch() -> None:
    scores = [0.3, 0.5, 0.6, 0.9]
    assert confident_strategy(scores) == pytest.approx(0.575)
    assert mean_strategy(scores) == pytest.approx(0.575)


def test_threshold_is_strict() -> None:
    assert confident_strategy([0.8] * 20) == pytest.approx(0.8)  # none > 0.8: mean branch
    assert confident_strategy([0.81] * 20, t=0.8) == pytest.approx(0.81)


def test_empty_is_an_error() -> None:
    with pytest.raises(ValueError):
        confident_strategy([])
    with pytest.raises(ValueError, match="unknown aggregation strategy"):
        get_strategy("median")


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=200))
def test_result_is_within_the_scores(scores: list[float]) -> None:
    result = confident_strategy(scores)
    assert min(scores) - 1e-12 <= result <= max(scores) + 1e-12
