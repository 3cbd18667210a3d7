"""What the service needs of an output: publish calls that never block, and counters to report.

The publish calls are plain (non-async) and return at once: a pipeline must never wait
for a broker.  ``enabled`` says whether results go anywhere at all (health treats a
disabled output as fine, a disconnected one as a problem).
"""

from __future__ import annotations

from typing import Any, Protocol


class Publisher(Protocol):
    enabled: bool  # False for NullPublisher: results go nowhere, on purpose

    def publish_status(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_score(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_alert(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_snapshot(self, stream: str, jpeg: bytes) -> None: ...
    def publish_retained(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None: ...
    def publish_alert_state(self, stream: str, payload: dict[str, Any]) -> None:
        """Whether an alert episode is open on ``stream``, kept for late subscribers (retained, replayed after reconnects)."""

    @property
    def connected(self) -> bool: ...

    @property
    def pending_alerts(self) -> int: ...

    scores_published: int
    scores_dropped: int
    alerts_delivered: int
    alerts_dropped: int
    snapshots_published: int
    reconnects: int


class NullPublisher:
    """Stands in for MQTT when it is disabled (benchmarks, scan-only set-ups): everything goes nowhere."""

    enabled = False
    connected = False
    pending_alerts = 0
    scores_published = 0
    scores_dropped = 0
    alerts_delivered = 0
    alerts_dropped = 0
    snapshots_published = 0
    reconnects = 0

    def publish_status(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_score(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_alert(self, stream: str, payload: dict[str, Any]) -> None: ...
    def publish_snapshot(self, stream: str, jpeg: bytes) -> None: ...
    def publish_retained(self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None: ...
    def publish_alert_state(self, stream: str, payload: dict[str, Any]) -> None: ...
