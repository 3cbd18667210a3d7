"""Decoding in a child process: same frames and states as the thread source, crash isolation."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np

from stream.config import StreamConfig
from stream.sources.base import SourceState
from stream.sources.process import ProcessVideoSource
from stream.sources.url import VideoSource


async def _collect(source, count: int) -> list:
    frames = []
    while len(frames) < count and (frame := await asyncio.wait_for(source.next_frame(), 30)) is not None:
        frames.append(frame)
    return frames


async def test_same_sampled_frames_as_the_thread_source(astronaut_clip: Path) -> None:
    cfg = StreamConfig(name="p", url=str(astronaut_clip), sample_fps=4)
    states: list[SourceState] = []
    process = ProcessVideoSource(cfg, lambda s, d: states.append(s))
    thread = VideoSource(cfg)
    process.start()
    thread.start()
    try:
        got = await _collect(process, 100)
        want = await _collect(thread, 100)
    finally:
        await process.stop()
        await thread.stop()
    assert len(got) == len(want) == 8  # 2 s at 4 samples/s
    for a, b in zip(got, want, strict=True):
        assert a.pts_s == b.pts_s and a.index == b.index
        np.testing.assert_array_equal(a.image, b.image)
    assert SourceState.STREAMING in states and states[-1] == SourceState.STOPPED
    assert process.stats.width == 640 and process.stats.frames_sampled == 8


async def test_failure_is_reported_from_the_child(tmp_path: Path) -> None:
    cfg = StreamConfig(name="p", url=str(tmp_path / "missing.mp4"))
    details: list[tuple[SourceState, str | None]] = []
    source = ProcessVideoSource(cfg, lambda s, d: details.append((s, d)))
    source.start()
    assert await asyncio.wait_for(source.next_frame(), 30) is None
    await source.stop()
    failed = [d for s, d in details if s == SourceState.FAILED]
    assert failed and "missing.mp4" in failed[0]


async def test_a_crashed_decoder_only_fails_its_stream(astronaut_clip: Path) -> None:
    cfg = StreamConfig(name="p", url=str(astronaut_clip), loop=True, realtime=True)
    details: list[tuple[SourceState, str | None]] = []
    source = ProcessVideoSource(cfg, lambda s, d: details.append((s, d)))
    source.start()
    assert await asyncio.wait_for(source.next_frame(), 30) is not None
    os.kill(source._proc.pid, signal.SIGKILL)  # noqa: SLF001 - a real crash of the decoder
    while await asyncio.wait_for(source.next_frame(), 30) is not None:
        pass
    await source.stop()
    assert details[-1][0] == SourceState.FAILED and "exit code -9" in (details[-1][1] or "")


async def test_skipping_non_reference_frames_halves_decoding(clips_dir: Path) -> None:
    """At 2 samples/s out of 30 fps, frames no other frame refers to need not be decoded at all."""
    results = {}
    for skip in ("none", "nonref"):
        source = VideoSource(StreamConfig(name="s", url=str(clips_dir / "nicoletmk-Real6.mp4"), sample_fps=2, skip_frames=skip))
        source.start()
        frames = await _collect(source, 1000)
        results[skip] = (len(frames), source.stats.frames_decoded)
        await source.stop()
    assert results["none"] == (20, 300)
    assert results["nonref"][0] == 20  # the same number of samples
    assert results["nonref"][1] < 0.6 * 300
