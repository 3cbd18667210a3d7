"""Alert episodes with hysteresis: one ``start`` per episode, bounded ``update``s, one ``end``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, model_validator

from detector.config import Probability, StrictModel

EventKind = Literal["start", "update", "end"]


class AlertConfig(StrictModel):
    """Alert episodes with hysteresis."""

    alert_threshold: Probability = Field(0.8, description="raise when the score stays >= this for `min_samples` samples")
    clear_threshold: Probability = Field(0.5, description="clear when it stays < this for `min_samples` samples")
    min_samples: Annotated[int, Field(gt=0)] = Field(3, description="consecutive samples needed to raise or clear")
    snapshot: bool = Field(True, description="JPEG of the most suspicious face on <prefix>/<stream>/snapshot at an alert's start")

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertConfig:
        if self.clear_threshold > self.alert_threshold:
            raise ValueError("clear_threshold must not exceed alert_threshold")
        return self


@dataclass(frozen=True)
class AlertEvent:
    kind: EventKind
    alert_id: str
    stream: str
    score: float
    time: float  # wall clock, seconds since the epoch
    started_at: float
    peak: float
    reason: str = ""

    def to_payload(self) -> dict[str, object]:
        return {
            "event": self.kind,
            "id": self.alert_id,
            "stream": self.stream,
            "score": round(self.score, 6),
            "peak": round(self.peak, 6),
            "time": self.time,
            "started_at": self.started_at,
            **({"reason": self.reason} if self.reason else {}),
        }

    def state_payload(self) -> dict[str, object]:
        """The retained ``<prefix>/<stream>/alert/state`` after this event: ``on`` with the episode, or ``off``."""
        if self.kind == "end":
            return alert_state_off(self.time, self.score)
        return {"state": "on", "id": self.alert_id, "since": self.started_at, "score": round(self.score, 6), "peak": round(self.peak, 6), "time": self.time}


def alert_state_off(now: float, score: float | None = None) -> dict[str, object]:
    """The retained alert state while no episode is open (at stream start and after an ``end``)."""
    return {"state": "off", "id": None, "since": now, "score": None if score is None else round(score, 6), "peak": None, "time": now}


@dataclass
class AlertTracker:
    """Raise when the score stays >= ``alert_threshold`` for ``min_samples`` samples,
    clear when it stays < ``clear_threshold`` for ``min_samples`` samples.

    Samples without a score (no face in the window) neither raise nor clear.
    While active, an ``update`` is sent when the peak rises by ``update_step``,
    at most every ``update_interval_s``: never a flood.
    """

    stream: str
    alert_threshold: float = 0.8
    clear_threshold: float = 0.5
    min_samples: int = 3
    update_step: float = 0.05
    update_interval_s: float = 5.0
    active_id: str | None = None
    _above: int = 0
    _below: int = 0
    _started_at: float = 0.0
    _peak: float = 0.0
    _reported_peak: float = 0.0
    _last_update: float = 0.0
    episodes: int = field(default=0)

    @property
    def active(self) -> bool:
        return self.active_id is not None

    def update(self, now: float, score: float | None) -> AlertEvent | None:
        if score is None:
            return None
        if not self.active:
            self._above = self._above + 1 if score >= self.alert_threshold else 0
            if self._above >= self.min_samples:
                return self._start(now, score)
            return None
        self._peak = max(self._peak, score)
        self._below = self._below + 1 if score < self.clear_threshold else 0
        if self._below >= self.min_samples:
            return self.end(now, score, "score cleared")
        if self._peak >= self._reported_peak + self.update_step and now - self._last_update >= self.update_interval_s:
            self._reported_peak, self._last_update = self._peak, now
            return self._event("update", now, score)
        return None

    def _start(self, now: float, score: float) -> AlertEvent:
        self.active_id = uuid.uuid4().hex
        self.episodes += 1
        self._started_at, self._peak, self._reported_peak, self._last_update = now, score, score, now
        self._above = self._below = 0
        return self._event("start", now, score)

    def end(self, now: float, score: float, reason: str) -> AlertEvent | None:
        """Close the open episode (score cleared, stream stopped or service shutting down)."""
        if not self.active:
            return None
        event = self._event("end", now, score, reason)
        self.active_id = None
        self._above = self._below = 0
        return event

    def _event(self, kind: EventKind, now: float, score: float, reason: str = "") -> AlertEvent:
        assert self.active_id is not None
        return AlertEvent(kind, self.active_id, self.stream, score, now, self._started_at, self._peak, reason)
