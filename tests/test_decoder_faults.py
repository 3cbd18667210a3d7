"""A decoder that fails mid-stream costs a reconnect, not the stream: the CPU side of the GPU suite's NVDEC test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.sources import url as url_module
from stream.sources.base import SourceError
from stream.sources.config import StreamConfig
from tests.fixtures.decoding import as_mpegts, clip, sampled_frames, serve


def test_a_failing_decoder_is_recreated_on_reconnect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = as_mpegts(clip(tmp_path, frames=100))
    calls = {"n": 0}
    original = url_module._CpuDecoder.decode  # noqa: SLF001 - the one decoding call, failed on purpose

    def failing_once(packet):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 20:
            raise SourceError("decoder session lost (simulated)")
        return original(packet)

    monkeypatch.setattr(url_module._CpuDecoder, "decode", staticmethod(failing_once))  # noqa: SLF001
    url = f"http://127.0.0.1:{serve(path)}/{path.name}"  # a network source reconnects (a file would fail for good)
    cfg = StreamConfig(name="flaky", url=url, sample_fps=5, decoder="thread", reconnect_min_s=0.1, reconnect_max_s=0.2)
    frames, stats = asyncio.run(asyncio.wait_for(sampled_frames(cfg, None, limit=15), 60))
    assert stats.reconnects == 1 and stats.decoder == "cpu"
    assert len(frames) == 15


@pytest.mark.parametrize("stalled_packet", [20, 1], ids=["after-it-worked", "before-its-first-picture"])
@pytest.mark.parametrize("loop", [True, False])
def test_a_looping_file_that_stalls_under_load_reconnects_and_a_plain_file_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: bool, stalled_packet: int
) -> None:
    """A looping file stands in for a feed: a stall (an overloaded box, also while 150 streams start at once)
    costs a reconnect, not the stream."""
    path = clip(tmp_path, frames=100)
    calls = {"n": 0}
    original = url_module._CpuDecoder.decode  # noqa: SLF001 - the one decoding call, stalled on purpose

    def stalling_once(packet):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == stalled_packet:
            time.sleep(1.5)  # past the watchdog, and no picture from this packet
            return []
        return original(packet)

    monkeypatch.setattr(url_module._CpuDecoder, "decode", staticmethod(stalling_once))  # noqa: SLF001
    cfg = StreamConfig(name="busy", url=str(path), sample_fps=5, decoder="thread", loop=loop, realtime=True, watchdog_s=1.0, reconnect_min_s=0.1, reconnect_max_s=0.2)
    frames, stats = asyncio.run(asyncio.wait_for(sampled_frames(cfg, None, limit=15), 60))
    if loop:
        assert stats.reconnects == 1 and len(frames) == 15
        pts = [f.pts_s for f in frames]
        assert pts == sorted(pts)  # the reopened file goes on after the last picture's time
    else:
        assert stats.reconnects == 0 and "no frame for 1 s (watchdog)" in (stats.last_error or "")
        assert len(frames) < 15
