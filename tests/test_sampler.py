"""FrameSampler: sampling by presentation time, not by frame count."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from stream.sampler import FrameSampler


def accepted(sampler: FrameSampler, pts: list[float]) -> list[float]:
    return [p for p in pts if sampler.accept(p)]


@pytest.mark.parametrize(
    ("input_fps", "sample_fps", "expected_step"),
    [(25, 5, 5), (30, 10, 3), (30, 1, 30), (25, 25, 1), (24, 8, 3), (60, 2, 30)],
)
def test_integer_ratios_take_every_nth_frame(input_fps: int, sample_fps: float, expected_step: int) -> None:
    pts = [i / input_fps for i in range(input_fps * 10)]
    kept = accepted(FrameSampler(sample_fps), pts)
    assert kept == pts[::expected_step]


@pytest.mark.parametrize(("input_fps", "sample_fps"), [(25, 2), (29.97, 2), (30, 7), (25, 0.5), (50, 3)])
def test_long_run_rate_matches_sample_fps_without_drift(input_fps: float, sample_fps: float) -> None:
    seconds = 120
    pts = [i / input_fps for i in range(int(seconds * input_fps))]
    kept = accepted(FrameSampler(sample_fps), pts)
    assert abs(len(kept) - seconds * sample_fps) <= 1
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    # Slots sit on a fixed grid, so a gap is the interval give or take one input frame.
    assert min(gaps) >= 1 / sample_fps - 1 / input_fps - 1e-6
    assert max(gaps) <= 1 / sample_fps + 1 / input_fps + 1e-6


def test_higher_sample_rate_than_input_keeps_every_frame() -> None:
    pts = [i / 10 for i in range(50)]
    assert accepted(FrameSampler(30), pts) == pts


def test_variable_frame_rate_is_sampled_by_time_not_count() -> None:
    rng = random.Random(7)
    pts, t = [], 0.0
    for second in range(60):  # bursts of 60 fps, then stretches of 5 fps
        fps = 60 if second % 2 else 5
        for _ in range(fps):
            pts.append(t)
            t += 1 / fps * rng.uniform(0.8, 1.2)
    kept = accepted(FrameSampler(2), pts)
    # A count-based sampler at "every Nth frame" would follow the bursts; by time it stays ~2 fps.
    assert abs(len(kept) - 2 * pts[-1]) <= 3
    # Exactly the first frame of every 0.5 s slot (of the grid anchored at the first frame).
    slots = [math.floor((p - pts[0] + 1e-6) / 0.5) for p in pts]  # 1 µs slack, as the sampler
    expected = [p for i, p in enumerate(pts) if i == 0 or slots[i] != slots[i - 1]]
    assert kept == expected


def test_first_frame_is_always_accepted_whatever_its_pts() -> None:
    sampler = FrameSampler(1)
    assert sampler.accept(12345.678)
    assert not sampler.accept(12345.9)
    assert sampler.accept(12346.678)


def test_gap_in_stream_resumes_on_next_frame_and_keeps_grid() -> None:
    sampler = FrameSampler(2)
    assert accepted(sampler, [0.0, 0.25, 0.5]) == [0.0, 0.5]
    # 10 s outage: the first frame after it is taken, later ones on the same 0.5 s grid.
    assert accepted(sampler, [10.3, 10.4, 10.5, 10.75, 11.0]) == [10.3, 10.5, 11.0]


@pytest.mark.parametrize("jump_to", [0.0, 3.0, 9.99])
def test_backwards_jump_starts_a_new_timeline(jump_to: float) -> None:
    sampler = FrameSampler(2)
    accepted(sampler, [i / 25 for i in range(251)])  # up to pts 10.0
    after = [jump_to + i / 25 for i in range(50)]
    kept = accepted(sampler, after)
    # Taken at once (not after waiting for pts 10.5), then every 0.5 s of the new timeline.
    assert kept == [after[0], after[13], after[25], after[38]]


def test_reset_forgets_the_timeline() -> None:
    sampler = FrameSampler(1)
    assert sampler.accept(5.0)
    assert not sampler.accept(5.5)
    sampler.reset()
    assert sampler.accept(5.6)


def test_duplicate_pts_is_not_taken_twice() -> None:
    sampler = FrameSampler(2)
    assert sampler.accept(1.0)
    assert not sampler.accept(1.0)
    assert sampler.accept(1.5)
    assert not sampler.accept(1.5)


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_rejects_bad_rates(bad: float) -> None:
    with pytest.raises(ValueError):
        FrameSampler(bad)


def test_rejects_non_finite_pts() -> None:
    with pytest.raises(ValueError):
        FrameSampler(1).accept(math.nan)
