"""The WebRTC source: sampled frames from an aiortc video track (what a WHIP session receives).

A reader task drains the track continuously (aiortc queues decoded frames without bound),
samples by presentation time and converts only the sampled frames to RGB, off the event
loop.  Only the newest sampled frame is kept: a live feed is analysed as it is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream.logs import stream_log
from stream.sampler import FrameSampler
from stream.sources.base import FpsWindow, SampledFrame, SourceStats, StreamState

log = logging.getLogger(__name__)


class WebRtcSource:
    """A FrameSource fed by an aiortc video track; ``on_streaming``/``on_ended`` tell the WHIP session."""

    def __init__(
        self,
        name: str,
        track: MediaStreamTrack,
        sample_fps: float,
        watchdog_s: float,
        on_streaming: Callable[[int, int], None],
        on_ended: Callable[[str], None],
    ) -> None:
        self.name = name
        self._track = track
        self._sampler = FrameSampler(sample_fps)
        self._watchdog_s = watchdog_s
        self._on_streaming = on_streaming
        self._on_ended = on_ended
        self._slot: SampledFrame | None = None
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._finished = False
        self._state = StreamState.CONNECTING
        self._last_error: str | None = None
        self._frames_decoded = 0
        self._frames_sampled = 0
        self._frames_dropped = 0
        self._width: int | None = None
        self._height: int | None = None
        self._fps = FpsWindow()
        self._log = stream_log(log, name)

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"webrtc-{self.name}")

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stats(self) -> SourceStats:
        return SourceStats(
            self._state, self._fps.rate(time.monotonic()), self._frames_decoded, self._frames_sampled,
            self._frames_dropped, 0, self._last_error, self._width, self._height,
        )  # fmt: skip

    async def next_frame(self) -> SampledFrame | None:
        """The newest sampled frame; None once the source stopped or the peer went away."""
        while True:
            if self._slot is not None:
                frame, self._slot = self._slot, None
                return frame
            if self._stopping or self._finished:
                return None
            self._ready.clear()
            await self._ready.wait()

    async def stop(self) -> None:
        self._stopping = True
        self._state = StreamState.STOPPED
        self._ready.set()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        detail = "peer stopped sending"
        try:
            while not self._stopping:
                try:
                    frame = await asyncio.wait_for(self._track.recv(), self._watchdog_s)
                except TimeoutError:
                    detail = f"no frame for {self._watchdog_s:g} s (watchdog)"
                    break
                except MediaStreamError:
                    break
                if isinstance(frame, av.VideoFrame):
                    await self._handle(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad frame ends this session, never the service
            self._log.exception("stream %s: webrtc reader crashed", self.name)
            detail = f"internal error: {type(exc).__name__}: {exc}"
        self._finished = True
        self._ready.set()
        if not self._stopping:
            self._last_error = detail
            self._on_ended(detail)

    async def _handle(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        self._frames_decoded += 1
        self._fps.record(now)
        self._width, self._height = frame.width, frame.height
        if self._state == StreamState.CONNECTING:
            self._state = StreamState.STREAMING
            self._on_streaming(frame.width, frame.height)
        pts_s = float(frame.time) if frame.time is not None else now
        if not self._sampler.accept(pts_s):
            return
        image = await asyncio.to_thread(frame.to_ndarray, format="rgb24")
        if self._stopping:
            return
        if self._slot is not None:
            self._frames_dropped += 1
        self._slot = SampledFrame(image, pts_s, now, time.time(), self._frames_sampled)
        self._frames_sampled += 1
        self._ready.set()
