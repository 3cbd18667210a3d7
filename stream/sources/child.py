"""The analyzer's side of a source decoded in another process (``process.py``, ``workers.py``).

What both keep here is the same: the state and counters as the decoder last reported them, and
the sampled frames waiting for the consumer, of which a live feed keeps only the newest (a frame
overwritten before it was taken is counted, and whatever it held in the decoder is released).
Messages arrive on a reader thread and are applied on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from stream.sources.base import FINAL_STATES, SampledFrame, SourceStats, StateCallback, StreamState
from stream.sources.config import StreamConfig

Release = Callable[[], None]  # gives a taken (or overwritten) frame's slot back to the decoder


class ChildSource:
    """Loop-side state of a source whose decoder runs elsewhere; subclasses start it and feed it messages."""

    def __init__(self, cfg: StreamConfig, on_state: StateCallback | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._on_state = on_state
        self._state = StreamState.CONNECTING
        self._child_stats = SourceStats.empty()  # the decoder's counters, as last sent
        self._dropped = 0
        self._pending: collections.deque[tuple[SampledFrame, Release | None]] = collections.deque()
        self._holds_back = False  # told by the decoder: a file read as fast as consumed keeps every frame
        self._ended = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    def _bind_loop(self) -> None:
        """Called by ``start()`` on the event loop."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback`` on the event loop (from the reader thread)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    # ---- loop thread --------------------------------------------------------------------
    def _set_stats(self, stats: dict[str, Any]) -> None:
        self._child_stats = SourceStats.from_dict(stats)

    def _deliver(self, frame: SampledFrame, stats: dict[str, Any], release: Release | None = None) -> None:
        self._set_stats(stats)
        if self._pending and not self._holds_back:  # a live feed keeps only the newest frame
            _, old_release = self._pending.popleft()
            if old_release is not None:
                old_release()
            self._dropped += 1
        self._pending.append((frame, release))
        assert self._ready is not None
        self._ready.set()

    def _change_state(self, state: StreamState, detail: str | None, stats: dict[str, Any]) -> None:
        self._set_stats(stats)
        self._state = state
        if self._on_state is not None:
            self._on_state(state, detail)

    def _end(self, exit_code: int | None, decoder: str, *, unexpected: bool = False) -> None:
        """The decoder is gone: a stream not ended on purpose is stopped (clean exit) or failed (a crash,
        or ``unexpected``: a shared worker that went away while this stream was still open)."""
        self._ended = True
        if self._state not in FINAL_STATES:
            failed = bool(exit_code) or unexpected
            if exit_code:
                detail = f"{decoder} died (exit code {exit_code})"
            else:
                detail = f"{decoder} ended unexpectedly" if unexpected else f"{decoder} ended"
            self._change_state(StreamState.FAILED if failed else StreamState.STOPPED, detail, self._child_stats.to_dict())
        if self._ready is not None:
            self._ready.set()

    async def next_frame(self) -> SampledFrame | None:
        assert self._ready is not None, "source not started"
        while True:
            self._ready.clear()
            if self._pending:
                frame, release = self._pending.popleft()
                if release is not None:
                    release()
                return frame
            if self._ended:
                return None
            await self._ready.wait()

    @property
    def holds_back(self) -> bool:
        return self._holds_back

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stats(self) -> SourceStats:
        child = self._child_stats
        return dataclasses.replace(child, state=self._state, frames_dropped=child.frames_dropped + self._dropped)
