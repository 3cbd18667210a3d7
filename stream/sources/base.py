"""What every video source shares: its states, the frames and counters it hands over, the fps window.

A source is anything that yields sampled RGB frames for one named stream: a URL decoded
in a thread (``url``), the same in a child process (``process``), a WebRTC track
(``webrtc``). The service, health, metrics and the pages only ever see this interface.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

FPS_WINDOW_S = 3.0  # fps_in is measured over this many seconds of decoding


class StreamState(StrEnum):
    """The one set of states a stream can be in, used by status payloads, metrics, health and the pages."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    FAILED = "failed"  # given up: the URL can never work, or the decoder died
    STOPPED = "stopped"  # ended on purpose: end of a file, or the service stopping
    OFFLINE = "offline"  # a WebRTC publisher left or went silent
    ERROR = "error"  # frames arrive but inference fails on them (a transient status, not a source state)


SourceState = StreamState  # the states a source reports are a subset of the stream's

FINAL_STATES = frozenset({StreamState.FAILED, StreamState.STOPPED})
FEED_LOST_STATES = frozenset({StreamState.RECONNECTING, StreamState.FAILED, StreamState.STOPPED, StreamState.OFFLINE})


@dataclass
class SampledFrame:
    """One sampled frame: RGB pixels plus both the stream's clock and ours."""

    image: Any  # RGB uint8, H x W x 3: a NumPy array, or a CUDA tensor from NVDEC (stays on the GPU)
    pts_s: float  # presentation time in seconds (continues across file loops; restarts on reconnect)
    arrival_monotonic: float  # time.monotonic() when decoded
    arrival_wall: float  # time.time() when decoded
    index: int  # 0, 1, 2... over the sampled frames of this source


@dataclass(frozen=True)
class SourceStats:
    """A consistent snapshot of a source's counters."""

    state: StreamState
    fps_in: float  # decoded frames per second over the last FPS_WINDOW_S
    frames_decoded: int
    frames_sampled: int
    frames_dropped: int  # sampled frames overwritten before the consumer took them
    reconnects: int  # connection attempts after the first one
    last_error: str | None
    width: int | None
    height: int | None
    decoder: str | None = None  # "cpu", "nvdec:<gpu>", or None before the first connection (WebRTC: its own)

    @classmethod
    def empty(cls, state: StreamState = StreamState.CONNECTING) -> SourceStats:
        return cls(state, 0.0, 0, 0, 0, 0, None, None, None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the process source sends its child's stats over a pipe)."""
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceStats:
        return cls(**{**data, "state": StreamState(data["state"])})


class SourceError(Exception):
    """A problem with the source, its message already human-readable and free of secrets."""


class FatalSourceError(SourceError):
    """A problem retrying cannot fix (unknown scheme, malformed URL, missing or broken local file)."""


StateCallback = Callable[[StreamState, str | None], None]


class FrameSource(Protocol):
    """What the service needs of a source: start it, read sampled frames, stop it, ask how it is doing."""

    name: str

    def start(self) -> None:
        """Begin producing frames; called from inside the running event loop."""

    async def next_frame(self) -> SampledFrame | None:
        """The next sampled frame; None once the source has ended."""

    async def stop(self) -> None:
        """Stop producing frames and release what the source holds."""

    @property
    def state(self) -> StreamState: ...

    @property
    def stats(self) -> SourceStats: ...


class FpsWindow:
    """Frames decoded over the last ``FPS_WINDOW_S`` seconds, as a rate. Not thread-safe: the caller locks."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> None:
        self._times.append(now)
        self.prune(now)

    def prune(self, now: float) -> None:
        times = self._times
        while times and times[0] < now - self.window_s:
            times.popleft()

    def rate(self, now: float, streaming_since: float | None = None) -> float:
        """Frames per second; with ``streaming_since``, over at most the time since then (at least 1 s).

        The at-least-1-s floor keeps the burst FFmpeg decodes while probing a new connection from
        reading as a rate.
        """
        self.prune(now)
        if not self._times:
            return 0.0
        span = self.window_s if streaming_since is None else min(self.window_s, max(now - streaming_since, 1.0))
        return len(self._times) / span
