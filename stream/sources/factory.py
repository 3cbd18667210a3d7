"""Which source a stream gets: the one place that maps a stream's config to a member of the family."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stream.logs import stream_log
from stream.sources.base import FrameSource, StateCallback
from stream.sources.config import NVDEC, StreamConfig

log = logging.getLogger(__name__)

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


def open_source(cfg: StreamConfig, on_state: StateCallback | None = None, device: object = None) -> FrameSource:
    """A source for ``cfg`` (already resolved), decoding where its ``decoder`` says; not started yet.

    ``device`` is where the engine analyses this stream's frames: NVDEC is used only on a CUDA
    device (its frames stay there), on that same GPU.
    """
    backoff = {"backoff_min_s": cfg.reconnect_min_s, "backoff_max_s": cfg.reconnect_max_s}
    if cfg.decoder == "process":
        from stream.sources.process import ProcessVideoSource

        return ProcessVideoSource(cfg, on_state, **backoff)
    from stream.sources.url import VideoSource

    gpu = nvdec_gpu(cfg, device)
    if gpu is not None and NVDEC.workers_per_gpu != 0:
        from stream.sources.workers import PooledSource, decoder_pool, default_workers

        pool = decoder_pool(gpu, NVDEC.workers_per_gpu or default_workers(NVDEC.backend))
        if pool.streams() < NVDEC.sessions_per_gpu:
            return PooledSource(cfg, pool, on_state, **backoff)
        stream_log(log, cfg.name).warning(
            "stream %s: all %d NVDEC sessions of cuda:%d are in use; decoding on the CPU", cfg.name, NVDEC.sessions_per_gpu, gpu, extra={"event": "nvdec_fallback"}
        )
        gpu = None
    return VideoSource(cfg, on_state, nvdec_gpu=gpu, **backoff)



def nvdec_gpu(cfg: StreamConfig, device: object) -> int | None:
    """The GPU whose NVDEC decodes this stream, or None for the CPU (``nvdec`` asked in vain says why)."""
    if cfg.decoder not in ("nvdec", "auto"):
        return None
    kind, _, index = str(device).partition(":")
    if kind != "cuda":
        reason = f"the engine runs on {device or 'cpu'}, so frames would have to cross to the host"
    else:
        if NVDEC.backend == "ffmpeg":
            from stream.sources.ffmpeg_nvdec import ffmpeg_nvdec_available

            reason = ffmpeg_nvdec_available(int(index or 0))
        else:
            from stream.sources.nvdec import nvdec_available

            reason = nvdec_available()
        if reason is None:
            return int(index or 0)
    if cfg.decoder == "nvdec":
        stream_log(log, cfg.name).warning("stream %s: decoder nvdec unavailable (%s); decoding on the CPU", cfg.name, reason, extra={"event": "nvdec_fallback"})
    return None
