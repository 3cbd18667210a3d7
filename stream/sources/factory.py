"""Which source a stream gets: the one place that maps a stream's config to a member of the family."""

from __future__ import annotations

from collections.abc import Sequence

from stream.sources.base import FrameSource, StateCallback
from stream.sources.config import StreamConfig

DEMO_URL = "demo:"


def resolve_stream_url(cfg: StreamConfig) -> StreamConfig:
    """``demo:`` -> the bundled demo clip, looped in real time; any other URL as it is."""
    if cfg.url.strip() != DEMO_URL:
        return cfg
    from stream.demo_media import demo_clip

    return cfg.model_copy(update={"url": str(demo_clip()), "loop": True, "realtime": True})


def prepare_demo_media(streams: Sequence[StreamConfig]) -> None:
    """Build the demo clip now (it is cached) if an enabled stream plays ``demo:``: off the event loop, before streams start."""
    if any(s.enabled and s.url.strip() == DEMO_URL for s in streams):
        from stream.demo_media import demo_clip

        demo_clip()


def open_source(cfg: StreamConfig, on_state: StateCallback | None = None) -> FrameSource:
    """A source for ``cfg`` (already resolved), decoding where its ``decoder`` says; not started yet."""
    backoff = {"backoff_min_s": cfg.reconnect_min_s, "backoff_max_s": cfg.reconnect_max_s}
    if cfg.decoder == "process":
        from stream.sources.process import ProcessVideoSource

        return ProcessVideoSource(cfg, on_state, **backoff)
    from stream.sources.url import VideoSource

    return VideoSource(cfg, on_state, **backoff)
