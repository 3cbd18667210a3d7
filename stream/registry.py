"""The running streams as the rest of the service sees them: a handle per stream, and the narrow
interface (``StreamRegistry``) that HTTP routes, metrics, health and the demo are given instead of
the service object itself."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from stream.pipeline import StreamPipeline
from stream.sources.base import FrameSource, StreamState


@dataclass
class StreamHandle:
    """One running stream: its source, its pipeline and the state last reported for it."""

    name: str
    kind: str  # "url", "webrtc", or whatever attached a custom source
    source: FrameSource
    pipeline: StreamPipeline
    owns_source: bool = True  # stop the source when the pipeline ends (a WHIP session stops its own)
    task: asyncio.Task[None] | None = None
    state: StreamState = StreamState.CONNECTING
    detail: str | None = None
    started: float = field(default_factory=time.time)
    state_since: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class StreamRegistry(Protocol):
    """What routes need of the service: the streams, adding and removing one, its state and status."""

    started_at: float

    def handles(self) -> list[StreamHandle]:
        """Every stream, configured and attached, in the order they were added."""

    def get(self, name: str) -> StreamHandle | None: ...

    def is_configured(self, name: str) -> bool:
        """Whether ``name`` is a stream of the config file or attached by something other than WHIP (WHIP may not take it)."""

    def add_source(self, name: str, source: FrameSource, kind: str = "webrtc", *, owns_source: bool = False) -> StreamHandle:
        """Analyse an already created source under ``name``."""

    async def remove_stream(self, name: str, state: StreamState = StreamState.OFFLINE, detail: str | None = None) -> None:
        """Stop the stream and leave it listed with ``state``."""

    def set_state(self, handle: StreamHandle, state: StreamState | str, detail: str | None) -> None:
        """Record, log and publish a stream's state."""

    def status_payload(self, handle: StreamHandle) -> dict[str, object]:
        """The stream's status as MQTT and the pages carry it."""
