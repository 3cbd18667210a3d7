"""VideoSource end to end: real encoded files, a real RTSP server, real dead and stalled sockets."""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import av
import numpy as np
import pytest

from stream.config import StreamConfig
from stream.sources.base import FrameSource, SampledFrame, SourceState, SourceStats
from stream.sources.config import Decoder
from stream.sources.factory import open_source
from stream.sources.url import VideoSource, ffmpeg_options, redact_url
from tests.fixtures.decoding import clip
from tests.fixtures.media import astronaut_frame, astronaut_video, astronaut_video_frames
from tests.fixtures.rtsp import RtspServer

pytestmark = pytest.mark.timeout(30)

FAST_BACKOFF = {"backoff_min_s": 0.1, "backoff_max_s": 0.4}


class StateLog:
    """Records on_state calls with the thread they ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[SourceState, str | None]] = []
        self.threads: set[int] = set()

    def __call__(self, state: SourceState, detail: str | None) -> None:
        self.events.append((state, detail))
        self.threads.add(threading.get_ident())

    @property
    def states(self) -> list[SourceState]:
        return [state for state, _ in self.events]


@asynccontextmanager
async def running(
    url: str, states: StateLog | None = None, *, backoff: dict[str, float] = FAST_BACKOFF, **settings: object
) -> AsyncIterator[VideoSource]:
    source = VideoSource(StreamConfig(name="cam", url=url, **settings), states, **backoff)
    source.start()
    try:
        yield source
    finally:
        await source.stop()


async def wait_state(source: FrameSource, state: SourceState, timeout: float) -> float:
    """Seconds until ``source`` is in ``state``; fails after ``timeout``."""
    started = time.monotonic()
    while source.state != state:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still {source.state} after {timeout} s (last error: {source.stats.last_error})")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def read_all(source: VideoSource, timeout: float = 10.0) -> list[SampledFrame]:
    frames = []
    while (frame := await asyncio.wait_for(source.next_frame(), timeout)) is not None:
        frames.append(frame)
    return frames


def assert_samples_in_order(frames: list[SampledFrame], stats: SourceStats, period_s: float) -> None:
    """Samples in order, ``period_s`` of video apart. A sample the consumer was too slow to take (a busy CI
    machine) is overwritten by the next one: a gap in the indices, allowed only where the source counted it dropped."""
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)), indices
    gaps = indices[-1] - indices[0] + 1 - len(indices)
    assert gaps <= stats.frames_dropped, f"{gaps} samples missing, {stats.frames_dropped} counted dropped: {indices}"
    assert np.allclose(np.diff([f.pts_s for f in frames]), period_s * np.diff(indices), atol=0.01)


async def frames_for(source: FrameSource, seconds: float) -> list[SampledFrame]:
    frames: list[SampledFrame] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await asyncio.wait_for(source.next_frame(), left)
        except TimeoutError:
            break
        assert frame is not None
        frames.append(frame)
    return frames


@functools.cache
def _astronaut_reference() -> list[np.ndarray]:
    return [frame.astype(np.int16) for frame in astronaut_video_frames()]


def astronaut_errors(frame: SampledFrame) -> tuple[float, float]:
    """Mean absolute difference of a sampled frame of the 2 s, 25 fps astronaut clip (looped) to the
    source picture shown at its pts, read as RGB and as BGR: lossy coding keeps the first small."""
    expected = _astronaut_reference()[round(frame.pts_s * 25) % 50]
    image = frame.image.astype(np.int16)
    return float(np.abs(image - expected).mean()), float(np.abs(image[..., ::-1] - expected).mean())


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s at 10 fps, 213x120: cheap to loop."""
    return astronaut_video(tmp_path_factory.mktemp("sources") / "short.mp4", seconds=1.0, fps=10, height=120)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_forever, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


@pytest.fixture(scope="module")
def hls_url(tmp_path_factory: pytest.TempPathFactory, astronaut_clip: Path) -> Iterator[str]:
    """The 2 s astronaut clip as an HLS VOD playlist (two 1 s MPEG-TS segments) on a loopback HTTP server."""
    root = tmp_path_factory.mktemp("hls")
    with (
        av.open(str(astronaut_clip)) as src,
        av.open(str(root / "index.m3u8"), "w", format="hls", options={"hls_time": "1", "hls_playlist_type": "vod"}) as out,
    ):
        video = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://viewer:hlspw99@127.0.0.1:{server.server_address[1]}/index.m3u8"
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://admin:p@ss@cam.local/live", "rtsp://admin:***@cam.local/live"),
        ("https://user:tok%40en@example.com/x.m3u8", "https://user:***@example.com/x.m3u8"),
        ("rtsp://user@cam/x", "rtsp://user@cam/x"),
        ("rtsp://cam/x?user=a&password=s3cret&ch=1", "rtsp://cam/x?user=a&password=***&ch=1"),
        ("/videos/a:b@c.mp4", "/videos/a:b@c.mp4"),
        ("rtsp://cam/path/with@sign", "rtsp://cam/path/with@sign"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_ffmpeg_options_force_tcp_and_microsecond_timeouts() -> None:
    assert ffmpeg_options("rtsp", 2.5) == {"rtsp_transport": "tcp", "timeout": "2500000", "allowed_media_types": "video"}
    assert ffmpeg_options("https", 0.5) == {"timeout": "500000", "rw_timeout": "500000"}
    assert ffmpeg_options(None, 3.0) == {}


# ---------------------------------------------------------------------------------- files


async def test_file_delivers_frames_sampled_by_pts_then_ends(astronaut_clip: Path) -> None:
    states = StateLog()
    async with running(str(astronaut_clip), states, sample_fps=5) as source:
        frames = await read_all(source)
        assert await source.next_frame() is None  # stays ended
        stats = source.stats
    assert [f.index for f in frames] == list(range(10))  # 2 s at 25 fps sampled at 5 fps
    assert [round(f.pts_s, 3) for f in frames] == [round(0.2 * i, 3) for i in range(10)]
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    # RGB, not BGR: the first frame matches the source picture (lossy, so only roughly).
    expected = astronaut_frame(360).astype(np.int16)[:, :640]
    rgb_error = np.abs(frames[0].image.astype(np.int16) - expected).mean()
    bgr_error = np.abs(frames[0].image[..., ::-1].astype(np.int16) - expected).mean()
    assert rgb_error < 6 < bgr_error
    assert all(b.arrival_monotonic >= a.arrival_monotonic for a, b in itertools.pairwise(frames))
    assert abs(frames[0].arrival_wall - time.time()) < 30
    assert (stats.frames_decoded, stats.frames_sampled, stats.frames_dropped) == (50, 10, 0)
    assert (stats.width, stats.height, stats.reconnects) == (640, 360, 0)
    assert states.events == [
        (SourceState.CONNECTING, None),
        (SourceState.STREAMING, None),
        (SourceState.STOPPED, "end of file"),
    ]
    assert states.threads == {threading.get_ident()}  # on_state runs on the loop's thread


async def test_slow_reader_of_a_file_misses_no_sampled_frame(astronaut_clip: Path) -> None:
    async with running(str(astronaut_clip), sample_fps=25) as source:
        frames = []
        while (frame := await source.next_frame()) is not None:
            frames.append(frame)
            await asyncio.sleep(0.005)  # slower than decoding: the decoder waits instead of dropping
        assert [f.index for f in frames] == list(range(50))
        assert source.stats.frames_dropped == 0


async def test_looping_file_restarts_with_continuous_pts(short_clip: Path) -> None:
    async with running(str(short_clip), sample_fps=5, loop=True) as source:
        frames = [await source.next_frame() for _ in range(12)]  # 5 per pass: into the 3rd pass
        assert source.state == SourceState.STREAMING
        assert source.stats.frames_decoded >= 22
    assert await source.next_frame() is None
    assert source.state == SourceState.STOPPED
    pts = [f.pts_s for f in frames if f is not None]
    assert len(pts) == 12
    assert np.allclose(np.diff(pts), 0.2, atol=1e-3), pts  # no jump back at the loop point


async def test_looping_file_seeks_back_with_the_same_decoder_and_loses_no_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B-frames: the pictures the decoder holds at the end of a pass come out before the next pass's first."""
    path = clip(tmp_path, frames=20, params="bframes=3:b-pyramid=none:keyint=25:log-level=error")
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    async with running(str(path), sample_fps=25, loop=True) as source:
        frames = [await source.next_frame() for _ in range(50)]  # every picture, into the third pass
    assert len(opened) == 1  # one container and one decoder for every pass
    assert all(frame is not None for frame in frames)
    assert np.allclose(np.diff([f.pts_s for f in frames]), 0.04, atol=1e-3)  # continuous, no picture twice or missing
    for i, frame in enumerate(frames[20:], start=20):
        assert np.array_equal(frame.image, frames[i % 20].image), i  # pass k's picture i is pass 0's


async def test_realtime_paces_at_the_video_clock(astronaut_clip: Path) -> None:
    async with running(str(astronaut_clip), sample_fps=5) as source:
        started = time.monotonic()
        assert len(await read_all(source)) == 10
        fast_s = time.monotonic() - started
    async with running(str(astronaut_clip), sample_fps=5, realtime=True) as source:
        frames = await read_all(source)
    paced_s = frames[-1].arrival_monotonic - frames[0].arrival_monotonic
    assert 1.6 <= paced_s <= 2.6  # 1.8 s of pts between the first and the last sampled frame
    for frame in frames:  # each frame arrives when its pts is due
        assert abs((frame.arrival_monotonic - frames[0].arrival_monotonic) - frame.pts_s) < 0.3
    assert fast_s < paced_s / 2


async def test_slow_consumer_gets_newest_frame_and_drops_are_counted(astronaut_clip: Path) -> None:
    async with running(str(astronaut_clip), sample_fps=25, realtime=True) as source:
        received = []
        while (frame := await source.next_frame()) is not None:
            received.append(frame)
            await asyncio.sleep(0.2)  # 5 reads/s for 25 frames/s
        stats = source.stats
    assert stats.frames_sampled == 50
    assert 20 <= stats.frames_dropped <= 48
    assert len(received) + stats.frames_dropped == stats.frames_sampled
    gaps = [b.index - a.index - 1 for a, b in itertools.pairwise(received)]
    assert sum(gaps) + received[0].index == stats.frames_dropped
    assert received[-1].index == 49  # the newest frame is never the one dropped


async def test_h265_file_with_nonref_skipping_decodes_fewer_frames_for_the_same_samples(astronaut_hevc_clip: Path) -> None:
    """x265's B-frames nothing refers to are not decoded at 2 samples/s; the samples are the same pictures."""
    runs = {}
    for skip in ("none", "nonref"):
        async with running(str(astronaut_hevc_clip), sample_fps=2, skip_frames=skip) as source:
            runs[skip] = (await read_all(source), source.stats)
    (full, full_stats), (skipped, skipped_stats) = runs["none"], runs["nonref"]
    assert full_stats.frames_decoded == 50
    assert 10 <= skipped_stats.frames_decoded <= 0.6 * 50  # 26 with x265's ultrafast GOP
    assert len(full) == len(skipped) == 4  # 2 s at 2 samples/s either way
    assert [round(f.pts_s, 2) for f in full] == [0.0, 0.52, 1.0, 1.52]  # the first picture at or after each 0.5 s slot
    for a, b in zip(full, skipped, strict=True):
        assert 0 <= b.pts_s - a.pts_s < 0.1  # the next decoded picture at most
        assert b.image.shape == (360, 640, 3)
        rgb_error, bgr_error = astronaut_errors(b)
        assert rgb_error < 3 < 8 < bgr_error, (b.pts_s, rgb_error, bgr_error)
    assert (skipped_stats.width, skipped_stats.height) == (640, 360)


async def test_missing_file_fails_without_retrying(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    states = StateLog()
    async with running(str(path), states) as source:
        assert await asyncio.wait_for(source.next_frame(), 5) is None
        assert source.state == SourceState.FAILED
        await asyncio.sleep(0.3)
        assert source.stats.reconnects == 0
    assert states.events[-1] == (SourceState.FAILED, f"{path}: file not found")
    assert source.state == SourceState.FAILED  # stop() keeps the reason visible


def _write_audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["text", "truncated", "audio_only", "directory"])
async def test_unusable_local_file_fails_with_clear_reason(kind: str, tmp_path: Path, astronaut_clip: Path) -> None:
    if kind == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 100)
        reason = "Invalid data found when processing input"
    elif kind == "truncated":  # moov atom is at the end: a cut-off recording
        path = tmp_path / "cut.mp4"
        path.write_bytes(astronaut_clip.read_bytes()[: astronaut_clip.stat().st_size // 2])
        reason = "Invalid data found when processing input"
    elif kind == "audio_only":
        path = _write_audio_only(tmp_path / "speech.wav")
        reason = "no video stream"
    else:
        path = tmp_path
        reason = "is a directory"
    async with running(str(path)) as source:
        assert await asyncio.wait_for(source.next_frame(), 5) is None
        stats = source.stats
    assert stats.state == SourceState.FAILED
    assert stats.last_error is not None and stats.last_error.startswith(f"{path}: {reason}")
    assert stats.reconnects == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("foo://camera/stream", "foo://camera/stream: unsupported URL scheme 'foo'"),
        ("rtsp://admin:pw123@[::1/stream", "rtsp://admin:***@[::1/stream: malformed URL"),
        ("rtsp:///stream", "rtsp:///stream: malformed URL (no host)"),
        ("rtsp://cam:99999/stream", "rtsp://cam:99999/stream: malformed URL"),
    ],
)
async def test_url_that_can_never_work_fails(url: str, reason: str) -> None:
    states = StateLog()
    async with running(url, states) as source:
        assert await asyncio.wait_for(source.next_frame(), 5) is None
        assert source.state == SourceState.FAILED
    state, detail = states.events[-1]
    assert state == SourceState.FAILED and detail is not None and detail.startswith(reason)
    assert "pw123" not in detail


# ---------------------------------------------------------------------------------- network failures


async def test_unreachable_host_keeps_retrying_with_exponential_backoff(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.sources")
    url = f"rtsp://admin:s3cretpw@127.0.0.1:{closed_port}/x"
    states = StateLog()
    async with running(url, states, sample_fps=1) as source:
        await wait_state(source, SourceState.RECONNECTING, 5)
        await asyncio.sleep(1.6)
        assert source.state == SourceState.RECONNECTING
        stats = source.stats
        assert stats.frames_decoded == 0
    assert await source.next_frame() is None
    assert stats.last_error == f"rtsp://admin:***@127.0.0.1:{closed_port}/x: Connection refused"
    delays = [float(d) for d in re.findall(r"Connection refused; retrying in ([\d.]+) s", caplog.text)]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]  # doubling from the minimum, capped at the maximum
    assert 3 <= stats.reconnects <= 8
    assert SourceState.FAILED not in states.states
    assert "s3cretpw" not in caplog.text and all("s3cretpw" not in (d or "") for _, d in states.events)


async def test_server_that_never_answers_times_out_within_bound(silent_server: int) -> None:
    async with running(f"rtsp://127.0.0.1:{silent_server}/x", open_timeout_s=0.5, read_timeout_s=0.5) as source:
        took = await wait_state(source, SourceState.RECONNECTING, 5)
        assert 0.4 <= took <= 2.0
        assert source.stats.last_error == f"rtsp://127.0.0.1:{silent_server}/x: no answer within 0.5 s (open timeout)"
        await asyncio.sleep(0.8)
        assert source.stats.reconnects >= 1  # and it keeps trying
        started = time.monotonic()
    assert time.monotonic() - started < 1.5  # stop() is not held up by the pending open for long


async def test_stop_does_not_wait_for_a_blocked_open(silent_server: int) -> None:
    states = StateLog()
    source = VideoSource(StreamConfig(name="cam", url=f"rtsp://127.0.0.1:{silent_server}/x", open_timeout_s=1.0), states)
    source.start()
    await asyncio.sleep(0.2)  # the decoder thread now waits inside avformat_open_input
    started = time.monotonic()
    await source.stop(join_timeout_s=0.2)
    assert time.monotonic() - started < 0.6
    assert await source.next_frame() is None
    await asyncio.sleep(1.3)  # the open times out in the thread meanwhile
    assert source.state == SourceState.STOPPED  # ...and does not turn the source back to reconnecting
    assert states.states == [SourceState.CONNECTING, SourceState.STOPPED]


# ---------------------------------------------------------------------------------- HLS over HTTP


async def test_hls_over_http_streams_and_reconnects_at_end_of_playlist(hls_url: str) -> None:
    states = StateLog()
    async with running(hls_url, states, sample_fps=5) as source:
        frame = await asyncio.wait_for(source.next_frame(), 10)
        assert frame is not None and frame.image.shape == (360, 640, 3)
        await wait_state(source, SourceState.RECONNECTING, 5)  # a live URL that ends is reconnected
        await wait_state(source, SourceState.STREAMING, 5)
        stats = source.stats
    assert stats.frames_decoded >= 51 and stats.reconnects >= 1
    safe = hls_url.replace("hlspw99", "***")
    assert (SourceState.RECONNECTING, f"{safe}: stream ended") in states.events
    assert all("hlspw99" not in (detail or "") for _, detail in states.events)


# ---------------------------------------------------------------------------------- real RTSP server


async def test_rtsp_stream_end_to_end(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    states = StateLog()
    async with running(server.url, states, sample_fps=5) as source:
        await wait_state(source, SourceState.STREAMING, 10)
        frames = await frames_for(source, 4.5)
        stats = source.stats
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # stop is prompt while frames flow
    assert await source.next_frame() is None
    assert states.events[:2] == [(SourceState.CONNECTING, None), (SourceState.STREAMING, None)]
    assert states.states[-1] == SourceState.STOPPED
    assert len(frames) >= 18  # ~5 per second (the server loops the 2 s clip forever)
    assert_samples_in_order(frames, stats, 0.2)  # 5 samples per second of video
    assert all(f.image.shape == (360, 640, 3) for f in frames)
    assert frames[-1].pts_s > 4.0  # past the clip's end: the loop is seamless
    assert 18 <= stats.fps_in <= 35  # the clip's 25 fps, measured
    assert (stats.width, stats.height, stats.reconnects) == (640, 360, 0)


@pytest.mark.parametrize("decoder", ["thread", "process"])
async def test_rtsp_h265_stream_with_either_cpu_decoder(decoder: Decoder, rtsp_server: Callable[..., RtspServer], astronaut_hevc_clip: Path) -> None:
    """Many IP cameras send H.265 by default: both CPU decoders stream it at its size, at the sample rate, with its picture."""
    server = rtsp_server(astronaut_hevc_clip)
    states = StateLog()
    cfg = StreamConfig(name="cam", url=server.url, sample_fps=5, decoder=decoder, reconnect_min_s=0.1, reconnect_max_s=0.4)
    source = open_source(cfg, states)
    assert type(source).__name__ == {"thread": "VideoSource", "process": "ProcessVideoSource"}[decoder]
    source.start()
    try:
        await wait_state(source, SourceState.STREAMING, 10)
        frames = await frames_for(source, 2.5)
        stats = source.stats
    finally:
        await source.stop()
    assert states.events[:2] == [(SourceState.CONNECTING, None), (SourceState.STREAMING, None)]
    assert states.states[-1] == SourceState.STOPPED
    assert (stats.width, stats.height, stats.reconnects, stats.last_error) == (640, 360, 0, None)  # 360 is not a multiple of x265's 16 px CUs: cropped
    assert len(frames) >= 12
    assert_samples_in_order(frames, stats, 0.2)  # 5 samples per second of video
    assert 4.5 <= stats.frames_decoded / stats.frames_sampled <= 5.0  # 1 in 5 of the 25 fps decoded
    assert frames[-1].pts_s > 2.2  # into the clip's second pass: the server's loop with B-frames is seamless
    for frame in frames:
        assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
        rgb_error, bgr_error = astronaut_errors(frame)
        assert rgb_error < 3 < 8 < bgr_error, (frame.pts_s, rgb_error, bgr_error)


async def test_rtsp_server_restart_reconnects_and_frames_flow_again(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    states = StateLog()
    async with running(server.url, states, sample_fps=5, open_timeout_s=2.0, read_timeout_s=2.0) as source:
        await wait_state(source, SourceState.STREAMING, 10)
        before = await frames_for(source, 0.5)
        server.stop()
        await wait_state(source, SourceState.RECONNECTING, 5)
        await asyncio.sleep(0.5)  # a few refused attempts while the camera is down
        assert source.stats.last_error is not None and "Connection refused" in source.stats.last_error
        server.start()
        await wait_state(source, SourceState.STREAMING, 10)
        after = await frames_for(source, 1.0)
        stats = source.stats
    assert before and after
    assert after[0].index > before[-1].index
    assert after[0].pts_s < before[-1].pts_s + 1  # a new session: pts restarted, sampling too
    assert stats.reconnects >= 2
    assert states.states[:2] == [SourceState.CONNECTING, SourceState.STREAMING]
    assert SourceState.RECONNECTING in states.states[2:]
    assert states.states[-2:] == [SourceState.STREAMING, SourceState.STOPPED]


async def test_rtsp_stall_trips_the_watchdog_and_recovers(rtsp_server: Callable[..., RtspServer]) -> None:
    server = rtsp_server()
    settings = {"sample_fps": 5, "watchdog_s": 1.0, "read_timeout_s": 10.0, "open_timeout_s": 1.0}
    async with running(server.url, **settings) as source:  # type: ignore[arg-type]
        await wait_state(source, SourceState.STREAMING, 10)
        await frames_for(source, 0.5)
        server.pause()  # the TCP connection stays open; nothing more arrives
        paused_at = time.monotonic()
        await wait_state(source, SourceState.RECONNECTING, 5)
        took = time.monotonic() - paused_at
        # The watchdog bounds the blocked read even though read_timeout_s is 10 s.
        assert 0.8 <= took <= 2.5
        assert source.stats.last_error == f"{server.url}: no frame for 1 s (watchdog)"
        server.resume()
        await wait_state(source, SourceState.STREAMING, 10)
        assert await frames_for(source, 0.5)


def test_nvdec_start_turns_let_a_few_streams_start_at_once() -> None:
    """Streams set up NVDEC sessions a few at a time; a stream told to stop while waiting leaves without a turn."""
    import threading
    import time

    from stream.sources.nvdec import StartTurns

    turns = StartTurns(2)
    started: list[int] = []
    go = threading.Event()

    def stream(i: int) -> None:
        go.wait()
        assert turns.take(threading.Event())
        time.sleep(0.02)  # the session being made
        started.append(i)
        turns.give_back()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(5)
    assert sorted(started) == list(range(8))
    assert turns.most_at_once == 2
    held = StartTurns(1)
    assert held.take(threading.Event())
    stop = threading.Event()
    waiter_got: list[bool] = []
    waiter = threading.Thread(target=lambda: waiter_got.append(held.take(stop)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting its turn
    stop.set()
    waiter.join(2)
    assert waiter_got == [False]
