"""A little memory of what the pipelines saw, for the dashboard: per stream a score history and the
latest alert snapshot, service-wide a timeline of alert episodes, and a change log for live views.

The pipelines feed it (``score``, ``alert``, ``alert_frame``: plain calls on the event loop, never
blocking); pages read it through ``RecorderView``.  Everything is bounded by the numbers below:
at most ``MAX_STREAMS`` streams of ``MAX_POINTS`` points and one JPEG (a few tens of KB: at most
``SNAPSHOT_MAX_SIDE`` px) each, ``TIMELINE_SIZE`` episodes and ``MAX_CHANGES`` changes, whatever
runs for however long.  A reader that fell further behind than the change log gets ``None`` from
``changes_since`` and starts over from ``state()``.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from stream.alerts import AlertEvent

HISTORY_S = 300.0  # the chart's span: the last 5 minutes of each stream's score
HISTORY_STEP_S = 1.0  # one point per second: the highest score of that second (a spike is never averaged away)
MAX_POINTS = int(HISTORY_S / HISTORY_STEP_S) + 1  # 301 points a stream
MAX_STREAMS = 256  # streams remembered; beyond, the one quiet for longest is forgotten
TIMELINE_SIZE = 100  # alert episodes kept for the whole service, newest first
MAX_CHANGES = 2048  # changes kept for live readers (~100 s of 10 streams at 2 samples/s)
SNAPSHOT_MAX_SIDE = 360  # px: the longest side of an alert snapshot
SNAPSHOT_CONTEXT = 0.6  # the face box's size added on each side, so the snapshot shows where the face is
SNAPSHOT_JPEG_QUALITY = 85
BOX_COLOR_RGB = (255, 32, 32)

Point = tuple[float, float | None, int]  # (start of the second, highest score in it or None without faces, most faces)


@dataclass(frozen=True)
class AlertSnapshot:
    """The frame region around the most suspicious face at an alert's start, with the face box drawn."""

    alert_id: str
    time: float
    score: float
    jpeg: bytes
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the JPEG's pixels
    width: int
    height: int

    def to_payload(self) -> dict[str, Any]:
        return {"id": self.alert_id, "time": self.time, "score": round(self.score, 6), "box": list(self.box), "width": self.width, "height": self.height}


@dataclass
class StreamRecord:
    points: deque[Point] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))
    score: float | None = None  # the running score after the latest sample
    faces: int = 0
    score_time: float | None = None
    alert: dict[str, Any] | None = None  # the open episode: id, started_at, score, peak
    alerts: int = 0  # episodes started
    last_alert_time: float | None = None  # start of the latest episode
    snapshot: AlertSnapshot | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "score": _round(self.score),
            "faces": self.faces,
            "score_time": self.score_time,
            "alert": None if self.alert is None else dict(self.alert),
            "alerts": self.alerts,
            "last_alert_time": self.last_alert_time,
            "snapshot": None if self.snapshot is None else self.snapshot.to_payload(),
            "history": [[t, _round(s), f] for t, s, f in self.points],
        }


class RecorderView(Protocol):
    """What pages read of the recorder."""

    seq: int  # number of the latest change

    def state(self) -> dict[str, Any]:
        """``{"seq", "streams": {name: record}, "timeline": [episode, newest first]}``."""

    def changes_since(self, seq: int) -> list[tuple[int, str, dict[str, Any]]] | None:
        """Changes after ``seq`` as ``(seq, kind, payload)``; kind ``score``, ``alert`` or ``snapshot``; None: too far behind."""

    def snapshot(self, stream: str) -> AlertSnapshot | None:
        """The latest alert snapshot of ``stream``."""

    async def wait(self, after: int, timeout: float) -> None:
        """Until a change after ``after``, ``wake()`` or ``timeout`` seconds."""

    def wake(self) -> None:
        """Wake every ``wait`` (e.g. the pages are closing)."""


class Recorder:
    """Fed by the pipelines (see the module docstring); bounded, and cheap enough to call per sample."""

    def __init__(self) -> None:
        self.streams: OrderedDict[str, StreamRecord] = OrderedDict()  # least recently fed first
        self.timeline: deque[dict[str, Any]] = deque()  # newest first, at most TIMELINE_SIZE
        self._episodes: dict[str, dict[str, Any]] = {}  # id -> its timeline entry
        self.changes: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=MAX_CHANGES)
        self.seq = 0
        self._wakeup = asyncio.Event()

    # ---- fed by the pipelines ---------------------------------------------------------------
    def score(self, stream: str, time: float, score: float | None, faces: int) -> None:
        """One scored sample: the running score after it (None while no face is in the window) and its faces."""
        record = self._record(stream)
        record.score, record.faces, record.score_time = score, faces, time
        second = math.floor(time / HISTORY_STEP_S) * HISTORY_STEP_S
        points = record.points
        if points and points[-1][0] == second:
            _, old_score, old_faces = points[-1]
            points[-1] = (second, _max(old_score, score), max(old_faces, faces))
        else:
            points.append((second, score, faces))
        t, s, f = points[-1]
        self._emit("score", {"stream": stream, "time": time, "score": _round(score), "faces": faces, "point": [t, _round(s), f]})

    def alert(self, event: AlertEvent) -> None:
        """An episode's ``start``, ``update`` or ``end``."""
        record = self._record(event.stream)
        entry = self._episodes.get(event.alert_id)
        if event.kind == "start":
            record.alerts += 1
            record.last_alert_time = event.started_at
            entry = {"id": event.alert_id, "stream": event.stream, "started_at": event.started_at, "ended_at": None, "peak": None, "score": None, "reason": None}
            if len(self.timeline) >= TIMELINE_SIZE:
                del self._episodes[self.timeline.pop()["id"]]
            self.timeline.appendleft(entry)
            self._episodes[event.alert_id] = entry
        if event.kind == "end":
            record.alert = None
        else:
            record.alert = {"id": event.alert_id, "started_at": event.started_at, "score": round(event.score, 6), "peak": round(event.peak, 6)}
        if entry is not None:
            entry.update(peak=round(event.peak, 6), score=round(event.score, 6))
            if event.kind == "end":
                entry.update(ended_at=event.time, reason=event.reason or None)
        self._emit("alert", {**event.to_payload(), "episode": None if entry is None else dict(entry)})

    def alert_frame(self, stream: str, alert_id: str, time: float, score: float, image: np.ndarray, box: tuple[float, float, float, float]) -> None:
        """The frame (RGB) and face box at an alert's start: kept as a JPEG of the region around the face, box drawn."""
        snapshot = make_snapshot(alert_id, time, score, image, box)
        if snapshot is None:
            return
        self._record(stream).snapshot = snapshot
        self._emit("snapshot", {"stream": stream, **snapshot.to_payload()})

    # ---- read by pages (RecorderView) ----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"seq": self.seq, "streams": {name: r.to_payload() for name, r in self.streams.items()}, "timeline": [dict(e) for e in self.timeline]}

    def changes_since(self, seq: int) -> list[tuple[int, str, dict[str, Any]]] | None:
        if seq >= self.seq:
            return []
        if not self.changes or self.changes[0][0] > seq + 1:
            return None  # some were already dropped from the log
        return [c for c in self.changes if c[0] > seq]

    def snapshot(self, stream: str) -> AlertSnapshot | None:
        record = self.streams.get(stream)
        return None if record is None else record.snapshot

    async def wait(self, after: int, timeout: float) -> None:
        if self.seq > after:
            return
        event = self._wakeup
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    def wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    # ---- inside ---------------------------------------------------------------------------------
    def _record(self, stream: str) -> StreamRecord:
        record = self.streams.get(stream)
        if record is None:
            record = self.streams[stream] = StreamRecord()
            if len(self.streams) > MAX_STREAMS:
                self.streams.popitem(last=False)
        else:
            self.streams.move_to_end(stream)
        return record

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        self.seq += 1
        self.changes.append((self.seq, kind, payload))
        self.wake()


def make_snapshot(alert_id: str, time: float, score: float, image: np.ndarray, box: tuple[float, float, float, float]) -> AlertSnapshot | None:
    """The region around ``box`` of the RGB ``image`` (at most SNAPSHOT_MAX_SIDE px), the box drawn on it, as a JPEG."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    pad = SNAPSHOT_CONTEXT * max(x2 - x1, y2 - y1)
    rx1, ry1 = int(max(x1 - pad, 0)), int(max(y1 - pad, 0))
    rx2, ry2 = int(min(math.ceil(x2 + pad), width)), int(min(math.ceil(y2 + pad), height))
    region = image[ry1:ry2, rx1:rx2]
    scale = min(1.0, SNAPSHOT_MAX_SIDE / max(region.shape[:2]))
    if scale < 1.0:
        size = (max(round(region.shape[1] * scale), 1), max(round(region.shape[0] * scale), 1))
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(region, cv2.COLOR_RGB2BGR)  # a copy: the frame itself is never drawn on
    h, w = bgr.shape[:2]
    drawn = (
        min(round((x1 - rx1) * scale), w - 1), min(round((y1 - ry1) * scale), h - 1),
        min(round((x2 - rx1) * scale), w - 1), min(round((y2 - ry1) * scale), h - 1),
    )  # fmt: skip
    thickness = max(3, round(max(h, w) / 90))
    cv2.rectangle(bgr, drawn[:2], drawn[2:], BOX_COLOR_RGB[::-1], thickness)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_JPEG_QUALITY])
    if not ok:
        return None
    return AlertSnapshot(alert_id, time, score, buf.tobytes(), drawn, w, h)


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
