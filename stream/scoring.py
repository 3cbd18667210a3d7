"""The running fakeness score of a stream and of each face track in it.

Scores live in a time window (last ``seconds``, at most ``max_scores``) and are
aggregated with the DFDC winner's confident strategy.  Faces are associated
across samples by box IoU so two people in one feed get their own scores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import Field

from detector.aggregation import Strategy, confident_strategy
from detector.config import PositiveFloat, StrictModel

Box = tuple[float, float, float, float]


class WindowConfig(StrictModel):
    """The running score's window: the last ``seconds`` or the last ``max_scores`` face scores."""

    seconds: PositiveFloat = Field(16.0, description="face scores older than this leave the window")
    max_scores: Annotated[int, Field(gt=0)] = Field(32, description="at most this many face scores in the window")


@dataclass(frozen=True)
class FaceScore:
    """One classified face of one sampled frame."""

    box: Box
    score: float
    detection_prob: float = 1.0


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ScoreWindow:
    """Scores of the last ``seconds`` (and at most ``max_scores`` of them)."""

    def __init__(self, seconds: float, max_scores: int) -> None:
        self.seconds = seconds
        self.items: deque[tuple[float, float]] = deque(maxlen=max_scores)

    def add(self, t: float, score: float) -> None:
        self.items.append((t, score))

    def prune(self, now: float) -> None:
        while self.items and self.items[0][0] < now - self.seconds:
            self.items.popleft()

    def scores(self) -> list[float]:
        return [s for _, s in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Track:
    track_id: int
    box: Box
    last_seen: float
    window: ScoreWindow


@dataclass
class ScoreSnapshot:
    """What ``<prefix>/<stream>/score`` publishes."""

    time: float
    score: float | None  # None while the window holds no face score
    window_size: int
    faces: int  # faces in the latest sample
    tracks: dict[int, dict[str, object]] = field(default_factory=dict)

    def to_payload(self) -> dict[str, object]:
        return {
            "score": None if self.score is None else round(self.score, 6),
            "window_size": self.window_size,
            "faces": self.faces,
            "tracks": {str(k): v for k, v in self.tracks.items()},
            "time": self.time,
        }


class RunningScore:
    """Per-stream window plus IoU-associated per-track windows."""

    def __init__(
        self,
        seconds: float = 16.0,
        max_scores: int = 32,
        strategy: Strategy = confident_strategy,
        iou_threshold: float = 0.3,
        track_ttl_s: float = 5.0,
    ) -> None:
        self.seconds, self.max_scores = seconds, max_scores
        self.strategy = strategy
        self.iou_threshold = iou_threshold
        self.track_ttl_s = track_ttl_s
        self.window = ScoreWindow(seconds, max_scores)
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def _assign(self, t: float, faces: Sequence[FaceScore]) -> list[Track]:
        """Greedy IoU matching, best pairs first; unmatched faces open new tracks."""
        pairs = sorted(
            ((iou(face.box, track.box), i, track.track_id) for i, face in enumerate(faces) for track in self.tracks.values()),
            reverse=True,
        )
        matched: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, i, track_id in pairs:
            if overlap < self.iou_threshold:
                break
            if i in matched or track_id in used:
                continue
            matched[i] = self.tracks[track_id]
            used.add(track_id)
        result = []
        for i, face in enumerate(faces):
            track = matched.get(i)
            if track is None:
                track = Track(self._next_id, face.box, t, ScoreWindow(self.seconds, self.max_scores))
                self.tracks[track.track_id] = track
                self._next_id += 1
            track.box, track.last_seen = face.box, t
            result.append(track)
        return result

    def update(self, t: float, faces: Sequence[FaceScore]) -> ScoreSnapshot:
        """Add one sample's face scores (``t`` in seconds, monotonic) and return the new aggregate."""
        for face, track in zip(faces, self._assign(t, faces), strict=True):
            self.window.add(t, face.score)
            track.window.add(t, face.score)
        self.window.prune(t)
        for track_id in [k for k, tr in self.tracks.items() if t - tr.last_seen > self.track_ttl_s]:
            del self.tracks[track_id]
        tracks = {}
        for track in self.tracks.values():
            track.window.prune(t)
            if len(track.window):
                tracks[track.track_id] = {
                    "score": round(self.strategy(track.window.scores()), 6),
                    "window_size": len(track.window),
                    "box": [round(v, 1) for v in track.box],
                }
        score = self.strategy(self.window.scores()) if len(self.window) else None
        return ScoreSnapshot(time=t, score=score, window_size=len(self.window), faces=len(faces), tracks=tracks)


def most_suspicious(faces: Sequence[FaceScore]) -> int | None:
    """Index of the face with the highest score (for the alert snapshot)."""
    if not faces:
        return None
    return int(np.argmax([f.score for f in faces]))
