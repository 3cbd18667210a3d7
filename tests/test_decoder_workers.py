"""Decoder worker processes hosting many streams each (the NVDEC layout), here on the CPU: real processes, real video."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from stream.sources.base import StreamState
from stream.sources.config import StreamConfig
from stream.sources.workers import DecoderPool, PooledSource


async def drain(source: PooledSource, limit: int = 1000) -> list[np.ndarray]:
    frames = []
    while len(frames) < limit and (frame := await source.next_frame()) is not None:
        frames.append(frame.image)
    return frames


def test_streams_share_workers_and_lose_no_frame_of_a_file(astronaut_clip: Path) -> None:
    pool = DecoderPool(None, workers=2)

    async def run() -> list[tuple[list[np.ndarray], list[StreamState], object]]:
        sources, states = [], []
        for i in range(3):
            seen: list[StreamState] = []
            states.append(seen)
            sources.append(PooledSource(StreamConfig(name=f"cam{i}", url=str(astronaut_clip), sample_fps=5), pool, lambda s, d, seen=seen: seen.append(s)))
        for source in sources:
            source.start()
        frames = await asyncio.gather(*(drain(s) for s in sources))
        results = [(f, st, s.stats) for f, st, s in zip(frames, states, sources, strict=True)]
        for source in sources:
            await source.stop()
        return results

    try:
        results = asyncio.run(run())
        assert len(pool.workers) == 2  # three streams, two processes
    finally:
        pool.close()
    for frames, states, stats in results:
        assert len(frames) == 10  # 2 s at 5 samples/s: a file is read as fast as consumed, nothing skipped
        assert all(isinstance(f, np.ndarray) and f.shape == (360, 640, 3) for f in frames)
        assert StreamState.STREAMING in states and states[-1] == StreamState.STOPPED
        assert stats.decoder == "cpu" and stats.frames_dropped == 0


def test_a_dead_worker_fails_its_streams_with_a_reason(astronaut_clip: Path) -> None:
    pool = DecoderPool(None, workers=1)
    details: list[str | None] = []

    async def run() -> PooledSource:
        cfg = StreamConfig(name="cam", url=str(astronaut_clip), loop=True, realtime=True)
        source = PooledSource(cfg, pool, lambda s, d: details.append(d))
        source.start()
        assert await source.next_frame() is not None
        os.kill(pool.workers[0].proc.pid, signal.SIGKILL)
        await asyncio.wait_for(drain(source), 30)  # ends: the worker is gone
        return source

    try:
        source = asyncio.run(run())
    finally:
        pool.close()
    assert source.state == StreamState.FAILED
    assert "decoder worker died" in (details[-1] or "")


def test_a_stream_that_cannot_open_fails_alone(astronaut_clip: Path, tmp_path: Path) -> None:
    pool = DecoderPool(None, workers=1)

    async def run() -> tuple[PooledSource, list[np.ndarray]]:
        bad = PooledSource(StreamConfig(name="bad", url=str(tmp_path / "missing.mp4")), pool)
        good = PooledSource(StreamConfig(name="good", url=str(astronaut_clip), sample_fps=5), pool)
        bad.start()
        good.start()
        frames = await asyncio.wait_for(drain(good), 60)
        await asyncio.wait_for(drain(bad), 30)
        return bad, frames

    try:
        bad, frames = asyncio.run(run())
    finally:
        pool.close()
    assert bad.state == StreamState.FAILED and "file not found" in (bad.stats.last_error or "")
    assert len(frames) == 10


@pytest.mark.parametrize("workers", [1, 3])
def test_pool_size_is_kept(workers: int) -> None:
    pool = DecoderPool(None, workers)
    assert pool.size == workers and pool.streams() == 0
    pool.close()


def test_closing_the_pool_under_busy_streams_raises_in_no_thread(astronaut_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool ends its connections while the reader threads are reading them (service shutdown, bench rows)."""
    import threading

    crashes: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}"))
    for _ in range(3):
        pool = DecoderPool(None, workers=2)

        async def run(pool: DecoderPool = pool) -> None:
            sources = [PooledSource(StreamConfig(name=f"cam{i}", url=str(astronaut_clip), loop=True, realtime=True, sample_fps=25), pool) for i in range(4)]
            for source in sources:
                source.start()
            for source in sources:
                assert await source.next_frame() is not None
            workers = list(pool.workers)
            pool.close()  # streams still running: no stop first
            # closed in order: each reader saw the end and closed its own connection, each worker left
            assert workers and all(not w.reader.is_alive() and w.conn.closed and w.proc.poll() is not None for w in workers)
            await asyncio.sleep(0.5)

        asyncio.run(run())
    assert crashes == []
