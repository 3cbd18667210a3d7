"""The stream supervisor: one task per stream, each feeding the shared engine through its pipeline.

One bad stream never stops the others: each runs in its own task, and its failure is
logged and published as its status.  The supervisor knows nothing of HTTP, metrics or
MQTT's transport: it is given an engine and a publisher (see ``stream/app.py``, which
builds everything), and routes see it only through ``StreamRegistry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from detector.aggregation import Strategy, confident_strategy
from detector.engine_pool import Engine
from stream.alerts import AlertConfig
from stream.logs import stream_log
from stream.outputs.publisher import Publisher
from stream.pipeline import StreamPipeline
from stream.recorder import Recorder
from stream.registry import StreamHandle
from stream.scoring import WindowConfig
from stream.sources.base import FEED_LOST_STATES, FrameSource, StreamState
from stream.sources.config import StreamConfig
from stream.sources.factory import open_source, resolve_stream_url
from stream.sources.url import redact_url

log = logging.getLogger(__name__)


class StreamService:
    """Every stream of the process: configured URL streams and attached sources (WebRTC)."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        *,
        window: WindowConfig,
        alerts: AlertConfig,
        strategy: Strategy = confident_strategy,
        configured: Sequence[StreamConfig] = (),
        on_stream_added: Callable[[str], None] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.window = window
        self.alerts = alerts
        self.strategy = strategy
        self.configured = list(configured)
        self._configured_names = {s.name for s in self.configured}
        self._on_stream_added = on_stream_added
        self.recorder = recorder  # handed to every pipeline (the dashboard's memory)
        self.streams: dict[str, StreamHandle] = {}
        self.started_at = time.time()
        self._stopping = False

    # ---- StreamRegistry ------------------------------------------------------------------
    def handles(self) -> list[StreamHandle]:
        return list(self.streams.values())

    def get(self, name: str) -> StreamHandle | None:
        return self.streams.get(name)

    def is_configured(self, name: str) -> bool:
        handle = self.streams.get(name)
        return name in self._configured_names or (handle is not None and handle.kind != "webrtc")

    def start_configured(self, owns: Callable[[str], bool] | None = None) -> None:
        """Start every enabled stream of the config that ``owns`` accepts (this replica's shard; default: all).

        Streams of other shards stay configured (``is_configured``: WHIP may not take their names)
        but are neither started nor listed.
        """
        for stream_cfg in self.configured:
            if owns is not None and not owns(stream_cfg.name):
                continue
            if stream_cfg.enabled:
                self.add_url_stream(stream_cfg)
            else:
                log.info("stream %s: disabled in config", stream_cfg.name, extra={"stream": stream_cfg.name, "event": "disabled"})

    def add_url_stream(self, stream_cfg: StreamConfig) -> StreamHandle:
        """Open ``stream_cfg``'s source (the decoder its config asks for) and supervise it."""
        stream_cfg = resolve_stream_url(stream_cfg)
        handle_ref: list[StreamHandle] = []

        def on_state(state: StreamState, detail: str | None) -> None:
            if handle_ref:
                self.set_state(handle_ref[0], state, detail)

        source = open_source(stream_cfg, on_state, device=self.engine.device_for(stream_cfg.name))
        handle = self._add(stream_cfg.name, "url", source, owns_source=True)
        handle_ref.append(handle)
        source.start()
        self.set_state(handle, source.state, f"opening {redact_url(stream_cfg.url)}")
        return handle

    def add_source(self, name: str, source: FrameSource, kind: str = "webrtc", *, owns_source: bool = False) -> StreamHandle:
        """Supervise an already running source (e.g. a WebRTC track) under ``name``."""
        return self._add(name, kind, source, owns_source=owns_source)

    def _add(self, name: str, kind: str, source: FrameSource, *, owns_source: bool) -> StreamHandle:
        existing = self.streams.get(name)
        if existing is not None and existing.running:
            raise ValueError(f"stream {name!r} is already running")
        pipeline = StreamPipeline(name, source, self.engine, self.publisher, self.window, self.alerts, self.strategy, self.recorder)
        handle = StreamHandle(name, kind, source, pipeline, owns_source=owns_source)
        self.streams[name] = handle
        if self._on_stream_added is not None:
            self._on_stream_added(name)
        handle.task = asyncio.create_task(self._supervise(handle), name=f"stream-{name}")
        return handle

    def set_state(self, handle: StreamHandle, state: StreamState | str, detail: str | None) -> None:
        state = StreamState(state)
        if state != handle.state:
            handle.state_since = time.monotonic()
        handle.state, handle.detail = state, detail
        if state in FEED_LOST_STATES:
            handle.pipeline.close_alert(f"stream {state}")  # an episode never outlives its feed
        level = logging.WARNING if state in (StreamState.FAILED, StreamState.RECONNECTING) else logging.INFO
        stream_log(log, handle.name).log(level, "stream %s: %s%s", handle.name, state, f" ({detail})" if detail else "", extra={"event": str(state)})
        self.publisher.publish_status(handle.name, self.status_payload(handle))

    def status_payload(self, handle: StreamHandle) -> dict[str, object]:
        payload: dict[str, object] = {"state": handle.state, "detail": handle.detail, "kind": handle.kind, "time": time.time()}
        stats = handle.source.stats
        payload.update({"fps_in": round(stats.fps_in, 2), "width": stats.width, "height": stats.height, "reconnects": stats.reconnects})
        return payload

    async def _supervise(self, handle: StreamHandle) -> None:
        try:
            await handle.pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken stream must not take the others down
            stream_log(log, handle.name).exception("stream %s: pipeline crashed", handle.name)
            self.set_state(handle, StreamState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.engine.forget(handle.name)
            if handle.owns_source and not self._stopping:
                await handle.source.stop()

    async def remove_stream(self, name: str, state: StreamState = StreamState.OFFLINE, detail: str | None = None) -> None:
        handle = self.streams.get(name)
        if handle is None:
            return
        await handle.source.stop()
        if handle.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(handle.task, 10)
        self.set_state(handle, state, detail)

    async def stop(self) -> None:
        """Stop every stream and end its alert episode; statuses say ``stopped``."""
        self._stopping = True
        for handle in self.handles():
            with contextlib.suppress(Exception):
                await handle.source.stop()
        tasks = [h.task for h in self.handles() if h.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
        for handle in self.handles():
            handle.pipeline.close_alert("service stopping")
            self.set_state(handle, StreamState.STOPPED, "service stopping")
