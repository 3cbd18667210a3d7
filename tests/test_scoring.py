"""Running score windows, IoU face tracks and alert hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.alerts import AlertTracker
from stream.scoring import FaceScore, RunningScore, iou


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_window_by_time_and_count() -> None:
    running = RunningScore(seconds=10, max_scores=4)
    for t in range(6):
        snap = running.update(float(t), [FaceScore((0, 0, 10, 10), 0.1 * t)])
    assert snap.window_size == 4  # count limit
    assert snap.score == pytest.approx((0.2 + 0.3 + 0.4 + 0.5) / 4)
    snap = running.update(20.0, [FaceScore((0, 0, 10, 10), 0.9)])
    assert snap.window_size == 1 and snap.score == pytest.approx(0.9)  # the rest aged out


def test_no_face_keeps_the_window_until_it_ages() -> None:
    running = RunningScore(seconds=5, max_scores=32)
    running.update(0.0, [FaceScore((0, 0, 10, 10), 0.7)])
    assert running.update(1.0, []).score == pytest.approx(0.7)
    assert running.update(6.0, []).score is None


def test_two_people_get_their_own_tracks() -> None:
    running = RunningScore(seconds=60, max_scores=64)
    left, right = (0, 0, 100, 100), (300, 0, 400, 100)
    for t in range(10):
        shift = 3 * t  # both drift a little
        snap = running.update(
            float(t),
            [FaceScore((right[0] + shift, 0, right[2] + shift, 100), 0.95), FaceScore((left[0] + shift, 0, left[2] + shift, 100), 0.05)],
        )
    assert len(snap.tracks) == 2
    scores = sorted(v["score"] for v in snap.tracks.values())
    assert scores[0] == pytest.approx(0.05) and scores[1] == pytest.approx(0.95)
    assert all(v["window_size"] == 10 for v in snap.tracks.values())


def test_tracks_expire() -> None:
    running = RunningScore(track_ttl_s=2.0)
    running.update(0.0, [FaceScore((0, 0, 10, 10), 0.5)])
    snap = running.update(5.0, [FaceScore((100, 100, 110, 110), 0.5)])
    assert list(snap.tracks) == [2]


def test_alert_needs_min_samples_and_fires_once() -> None:
    tracker = AlertTracker("cam", alert_threshold=0.8, clear_threshold=0.5, min_samples=3)
    events = [tracker.update(float(t), s) for t, s in enumerate([0.9, 0.9, 0.7, 0.9, 0.9, 0.95, 0.96, 0.97, 0.9])]
    kinds = [e.kind for e in events if e]
    assert kinds == ["start"]
    assert events[5] is not None and events[5].kind == "start"


def test_alert_clears_with_hysteresis_then_new_episode() -> None:
    tracker = AlertTracker("cam", min_samples=2, update_interval_s=0.0)
    seq = [0.9, 0.9, 0.6, 0.45, 0.7, 0.4, 0.3, 0.9, 0.9]
    events = [tracker.update(float(t), s) for t, s in enumerate(seq)]
    kinds = [(t, e.kind) for t, e in enumerate(events) if e]
    assert kinds == [(1, "start"), (6, "end"), (8, "start")]
    assert events[1].alert_id == events[6].alert_id != events[8].alert_id
    assert tracker.episodes == 2


def test_updates_are_bounded() -> None:
    tracker = AlertTracker("cam", min_samples=1, update_step=0.05, update_interval_s=5.0)
    events = [tracker.update(t * 0.5, 0.8 + min(t, 19) * 0.01) for t in range(100)]
    updates = [e for e in events if e and e.kind == "update"]
    assert 1 <= len(updates) <= 4
    assert all(b.time - a.time >= 5.0 for a, b in zip(updates, updates[1:], strict=False))


def test_none_neither_raises_nor_clears() -> None:
    tracker = AlertTracker("cam", min_samples=2)
    assert tracker.update(0, 0.9) is None
    assert tracker.update(1, None) is None
    assert tracker.update(2, 0.9).kind == "start"
    for t in range(3, 10):
        assert tracker.update(t, None) is None
    assert tracker.active
    end = tracker.end(11, 0.9, "stream stopped")
    assert end.kind == "end" and end.reason == "stream stopped"
    assert tracker.end(12, 0.9, "again") is None


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=300), st.integers(1, 5))
def test_episodes_alternate_start_end(scores: list[float | None], min_samples: int) -> None:
    tracker = AlertTracker("cam", min_samples=min_samples)
    kinds = [e.kind for t, s in enumerate(scores) if (e := tracker.update(float(t), s)) and e.kind != "update"]
    assert all(k == ("start" if i % 2 == 0 else "end") for i, k in enumerate(kinds))
    assert tracker.episodes == kinds.count("start")
