"""The URL source: any FFmpeg URL (RTSP, HTTP/HLS, local files) decoded by PyAV into sampled RGB frames.

Each source decodes in its own thread because PyAV's demux/decode calls block (and release the
GIL), and a stalled camera must never stall the event loop or the other streams. The thread
samples frames by presentation time *before* converting them to RGB, so the costly conversion is
paid only for the frames the detector will see, and it hands over only the newest sampled frame:
a live feed must be analysed as it is now, not as it was when the detector fell behind.

Failures are handled in one place: every error, the end of a live stream and the no-frame
watchdog lead to a reconnect with exponential backoff; a URL that can never work (unknown
scheme, malformed URL, missing or unreadable local file) ends in ``failed`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import av
import av.error
import numpy as np

from stream.logs import stream_log
from stream.sampler import FrameSampler
from stream.sources.base import (
    FINAL_STATES,
    FatalSourceError,
    FpsWindow,
    SampledFrame,
    SourceError,
    SourceStats,
    StateCallback,
    StreamState,
)
from stream.sources.config import NVDEC, StreamConfig
from stream.sources.nvdec import STARTS
from stream.sources.rewind import drain

log = logging.getLogger(__name__)

_MAX_PACE_SLEEP_S = 5.0  # realtime pacing never waits longer than this for one frame (pts gaps)
_MAX_PACE_LAG_S = 0.5  # further behind than this, pacing re-anchors instead of bursting to catch up
_NETWORK_SCHEMES_WITH_HOST = {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "tcp", "udp", "rtp"}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_USERINFO_RE = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/?#@:]*):(?P<pw>[^/?#]*)@")
_SECRET_QUERY_RE = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|token|secret|key|auth)=)[^&#;]*")


def redact_url(url: str) -> str:
    """``url`` safe for logs: ``user:pass@`` becomes ``user:***@`` and secret-looking query values ``***``.

    The password part runs to the *last* ``@`` of the authority, as FFmpeg parses it, so a raw
    ``@`` inside a password does not leak its tail.
    """
    redacted = _USERINFO_RE.sub(lambda m: f"{m['head']}{m['user']}:***@", url, count=1)
    return _SECRET_QUERY_RE.sub(r"\1***", redacted)




@dataclass(frozen=True)
class _Target:
    """What the URL points at, worked out once."""

    url: str
    safe_url: str
    scheme: str | None  # None for a plain local path
    local_path: Path | None  # set for local files (plain path or file: URL)
    password: str | None

    @property
    def is_file(self) -> bool:
        return self.local_path is not None


def _parse_target(url: str) -> _Target:
    """Classify ``url``; raises FatalSourceError for URLs that can never be opened."""
    safe = redact_url(url)
    match = _SCHEME_RE.match(url)
    scheme = match.group(1).lower() if match else None
    if scheme is None or scheme == "file":
        raw = url[len("file:") :] if scheme == "file" else url
        raw = raw.removeprefix("//")
        return _Target(url, safe, scheme, Path(unquote(raw) if scheme else raw), None)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise FatalSourceError(f"{safe}: malformed URL ({exc})") from None
    if scheme in _NETWORK_SCHEMES_WITH_HOST and not parts.hostname:
        raise FatalSourceError(f"{safe}: malformed URL (no host)")
    password = unquote(parts.password) if parts.password else None
    return _Target(url, safe, scheme, None, password)


def ffmpeg_options(scheme: str | None, read_timeout_s: float) -> dict[str, str]:
    """FFmpeg options for ``scheme``: TCP for RTSP (UDP loses packets and is blocked by most NATs)
    and socket I/O timeouts, in microseconds as FFmpeg >= 5 expects them, so a dead peer errors out."""
    micros = str(int(read_timeout_s * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        return {"rtsp_transport": "tcp", "timeout": micros, "allowed_media_types": "video"}
    if scheme in ("http", "https"):
        return {"timeout": micros, "rw_timeout": micros}
    if scheme in (None, "file"):
        return {}
    return {"rw_timeout": micros}


class _Stalled(SourceError):
    """No frame within the watchdog or read timeout."""


class VideoSource:
    """One video feed decoded in a dedicated thread, consumed with ``await next_frame()``.

    ``on_state(state, detail)`` runs on the event loop thread at every change of state or of
    its detail; ``detail`` says what went wrong in plain words and never contains a password.
    ``backoff_min_s``/``backoff_max_s`` bound the reconnect delay, which doubles after each
    failed attempt and starts again from the minimum once frames have flowed.
    """

    def __init__(
        self,
        cfg: StreamConfig,
        on_state: StateCallback | None = None,
        *,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 30.0,
        nvdec_gpu: int | None = None,
    ) -> None:
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s")
        self.cfg = cfg
        self.name = cfg.name
        self.url = cfg.url
        self._logger = stream_log(log, cfg.name)
        self._on_state = on_state
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        # A blocked FFmpeg read must end by the watchdog too, so it is bounded by the smaller one.
        self._read_timeout_s = min(cfg.read_timeout_s, cfg.watchdog_s)
        self._safe_url = redact_url(cfg.url)
        self._target: _Target | None = None
        self._url_error: str | None = None  # reported as ``failed`` once started, like any other error
        try:
            self._target = _parse_target(cfg.url)
        except FatalSourceError as exc:
            self._url_error = str(exc)
        is_file = self._target is not None and self._target.is_file
        # Only local files are paced (live feeds pace themselves) or held back by the consumer.
        self._realtime = cfg.realtime and is_file
        self._backpressure = is_file and not cfg.realtime


        self._lock = threading.Condition()
        self._slot: SampledFrame | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frame_ready: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._thread_done = False  # set on the loop thread once the decoder thread has finished
        self._stopped = False  # stop() was called

        self._state = StreamState.CONNECTING
        self._detail: str | None = None
        self._frames_decoded = 0
        self._frames_sampled = 0
        self._frames_dropped = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._width: int | None = None
        self._height: int | None = None
        self._fps = FpsWindow()
        self._streaming_since: float | None = None
        self._nvdec_gpu = nvdec_gpu  # decode on this GPU's NVDEC when the stream allows it
        self._frames: _FrameDecoder | None = None  # this connection's decoder
        self._decoder_name: str | None = None
        self._nvdec_refusal: str | None = None  # the last reason NVDEC could not take this stream
        self._ffmpeg_session = False  # this connection holds a decoder session for FFmpeg's NVDEC

    # ------------------------------------------------------------------ async API (event loop)
    @property
    def holds_back(self) -> bool:
        """True for a file read as fast as consumed: it waits for its reader and never drops a frame."""
        return self._backpressure


    def start(self) -> None:
        """Start the decoder thread; call from inside the running event loop."""
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._frame_ready = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._log(logging.INFO, "start", "starting %s", self._safe_url)
        self._emit(StreamState.CONNECTING, None)
        self._thread.start()

    async def next_frame(self) -> SampledFrame | None:
        """The next sampled frame (the newest one if several came meanwhile); None once the source has ended."""
        if self._frame_ready is None:
            raise RuntimeError(f"source {self.name} not started")
        while True:
            self._frame_ready.clear()
            if self._stopped:
                return None
            with self._lock:
                frame, self._slot = self._slot, None
                self._lock.notify_all()  # a back-pressured file decoder may go on
            if frame is not None:
                return frame
            if self._thread_done:
                return None
            await self._frame_ready.wait()

    async def stop(self, join_timeout_s: float = 2.0) -> None:
        """Stop decoding and wait (off the loop) up to ``join_timeout_s`` for the thread to end.

        A running decoder stops at its next packet. One stuck in a blocking FFmpeg open or read
        cannot be interrupted from outside; it ends by itself within the open/read timeout and
        changes nothing after stop(), so stop() does not wait for it beyond ``join_timeout_s``.
        """
        self._stopped = True
        self._stop_requested.set()
        with self._lock:
            self._lock.notify_all()
        if self._frame_ready is not None:
            self._frame_ready.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, join_timeout_s)
            if thread.is_alive():
                self._log(
                    logging.INFO,
                    "stop_pending",
                    "decoder thread blocked in FFmpeg; it ends within %.1f s",
                    max(self._read_timeout_s, self.cfg.open_timeout_s),
                )
        if self._state not in FINAL_STATES:
            self._set_state(StreamState.STOPPED, "stopped")

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._lock:
            fps = self._fps.rate(now, self._streaming_since) if self._streaming_since is not None else 0.0
            return SourceStats(
                state=self._state,
                fps_in=fps,
                frames_decoded=self._frames_decoded,
                frames_sampled=self._frames_sampled,
                frames_dropped=self._frames_dropped,
                reconnects=self._reconnects,
                last_error=self._last_error,
                width=self._width,
                height=self._height,
                decoder=self._decoder_name,
            )

    def _emit(self, state: StreamState, detail: str | None) -> None:
        """Runs on the loop thread."""
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:  # noqa: BLE001 - a failing listener must not kill the decoder
                self._logger.exception("stream %s: on_state callback failed", self.name)

    def _on_thread_done(self) -> None:
        self._thread_done = True
        if self._frame_ready is not None:
            self._frame_ready.set()

    # ------------------------------------------------------------------ thread side

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback`` on the event loop; a closed loop means nobody listens any more."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed without stop(): end the thread quietly
            self._stop_requested.set()

    def _set_state(self, state: StreamState, detail: str | None) -> None:
        """Record a state and tell on_state if it or its detail changed (any thread).

        ``failed`` and ``stopped`` are final: a decoder thread that wakes up late from a blocked
        read after stop() cannot turn a stopped source back into a reconnecting one.
        """
        with self._lock:
            if state == self._state and detail == self._detail:
                return
            if self._state in FINAL_STATES:
                return
            self._state, self._detail = state, detail
            if state == StreamState.STREAMING:
                self._streaming_since = time.monotonic()
            if state in (StreamState.FAILED, StreamState.RECONNECTING):
                self._last_error = detail
        if threading.current_thread() is self._thread:
            self._post(self._emit, state, detail)
        else:
            self._emit(state, detail)

    def _log(self, level: int, event: str, message: str, *args: object) -> None:
        self._logger.log(level, "stream %s: " + message, self.name, *args, extra={"event": event})

    def _run(self) -> None:
        try:
            self._run_until_done()
        except Exception as exc:  # noqa: BLE001 - a bug, not a stream problem: say so instead of dying silently
            self._logger.exception("stream %s: decoder thread crashed", self.name)
            self._set_state(StreamState.FAILED, f"{self._safe_url}: internal error: {self._scrub(str(exc))}")
        finally:
            self._post(self._on_thread_done)

    def _run_until_done(self) -> None:
        target = self._target
        if target is None:
            self._fail(self._url_error or f"{self._safe_url}: malformed URL")
            return
        sampler = FrameSampler(self.cfg.sample_fps)
        delay = self._backoff_min_s
        attempt = 0
        timeline = _Timeline()
        while not self._stop_requested.is_set():
            if attempt:
                with self._lock:
                    self._reconnects += 1
            attempt += 1
            frames_before = self._frames_decoded
            stalled = False
            try:
                self._stream_once(target, sampler, timeline)
            except FatalSourceError as exc:
                self._fail(str(exc))
                return
            except SourceError as exc:
                detail, stalled = str(exc), isinstance(exc, _Stalled)
            except (av.error.FFmpegError, OSError) as exc:
                detail = self._describe(exc)
            else:  # end of input
                if self._stop_requested.is_set():
                    return
                if target.is_file:
                    if not self.cfg.loop:
                        self._log(logging.INFO, "eof", "end of file %s", self._safe_url)
                        self._set_state(StreamState.STOPPED, "end of file")
                        return
                    if self._frames_decoded == frames_before:
                        self._fail(f"{self._safe_url}: no decodable video frame")
                        return
                    timeline.new_pass()
                    self._log(logging.DEBUG, "loop", "looping %s", self._safe_url)
                    attempt = 0  # a loop is not a reconnect
                    continue
                detail = f"{self._safe_url}: stream ended"
            if self._stop_requested.is_set():
                return
            if target.is_file:
                if not (stalled and self.cfg.loop):
                    self._fail(detail)  # a local file that errors will error again
                    return
                # a looping file stands in for a feed: a stall (no picture within the watchdog, as when a
                # busy box starts 150 streams at once) is load, not a broken file; broken ones raise
                timeline.new_pass()
            if self._frames_decoded > frames_before:
                delay = self._backoff_min_s  # it worked for a while: retry quickly
            self._set_state(StreamState.RECONNECTING, detail)
            self._log(logging.WARNING, "reconnect", "%s; retrying in %g s", detail, round(delay, 3))
            if self._stop_requested.wait(delay):
                return
            delay = min(delay * 2, self._backoff_max_s)

    def _fail(self, detail: str) -> None:
        self._log(logging.ERROR, "failed", "%s; giving up", detail)
        self._set_state(StreamState.FAILED, detail)

    def _open(self, target: _Target) -> av.container.InputContainer:
        if target.local_path is not None:
            path = target.local_path
            if not path.exists():
                raise FatalSourceError(f"{self._safe_url}: file not found")
            if path.is_dir():
                raise FatalSourceError(f"{self._safe_url}: is a directory, not a video file")
        started = time.monotonic()
        hwaccel = self._take_ffmpeg_nvdec_session()
        try:
            if hwaccel is not None and self._nvdec_gpu is not None:
                from stream.sources.ffmpeg_nvdec import make_torch_context_current

                make_torch_context_current(self._nvdec_gpu)  # FFmpeg decodes in torch's context; this thread keeps it
            return av.open(
                str(target.local_path) if target.local_path is not None else target.url,
                mode="r",
                options=ffmpeg_options(target.scheme, self._read_timeout_s),
                timeout=(self.cfg.open_timeout_s, self._read_timeout_s),
                **({"hwaccel": hwaccel} if hwaccel is not None else {}),
            )
        except BaseException as exc:
            self._release_ffmpeg_nvdec_session()  # the connection never got its decoder
            self._open_failed(target, started, exc)
            raise

    def _take_ffmpeg_nvdec_session(self) -> object | None:
        """PyAV's hwaccel for this connection when FFmpeg's NVDEC is to decode it (one of the GPU's
        decoder sessions taken), else None: the CPU decodes, with the reason logged once."""
        if self._nvdec_gpu is None or NVDEC.backend != "ffmpeg":
            return None
        from stream.sources.ffmpeg_nvdec import ffmpeg_nvdec_available, hwaccel
        from stream.sources.nvdec import SESSIONS, NvdecUnavailable

        reason = ffmpeg_nvdec_available(self._nvdec_gpu)
        if reason is not None:
            self._note_nvdec_refusal(reason)
            return None
        try:
            SESSIONS.acquire(self._nvdec_gpu)
        except NvdecUnavailable as exc:
            self._note_nvdec_refusal(str(exc))
            return None
        self._ffmpeg_session = True
        return hwaccel(self._nvdec_gpu)

    def _release_ffmpeg_nvdec_session(self) -> None:
        if self._ffmpeg_session and self._nvdec_gpu is not None:
            from stream.sources.nvdec import SESSIONS

            self._ffmpeg_session = False
            SESSIONS.release(self._nvdec_gpu)

    def _note_nvdec_refusal(self, reason: str) -> None:
        if reason != self._nvdec_refusal:
            self._nvdec_refusal = reason
            self._log(logging.WARNING, "nvdec_fallback", "%s; decoding on the CPU instead", reason)

    def _open_failed(self, target: _Target, started: float, exc: BaseException) -> None:
        """Raise the error a failed ``av.open`` means for this source (fatal for a file, a reconnect otherwise)."""
        if isinstance(exc, av.error.ProtocolNotFoundError):
            raise FatalSourceError(
                f"{self._safe_url}: unsupported URL scheme {target.scheme!r} (no such FFmpeg protocol)"
            ) from None
        if isinstance(exc, (av.error.FFmpegError, OSError)):
            # FFmpeg reports its own timeouts as odd errors ("Invalid data..."): judge by the clock.
            limit, which = self.cfg.open_timeout_s, "open timeout"
            if not target.is_file and self._read_timeout_s < limit:  # the socket I/O timeout came first
                limit, which = self._read_timeout_s, "read timeout"
            elapsed = time.monotonic() - started
            if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)) or elapsed >= 0.95 * limit:
                detail = f"{self._safe_url}: no answer within {limit:g} s ({which})"
            else:
                detail = self._describe(exc)
            if target.is_file:
                raise FatalSourceError(f"{detail} (not a readable video file?)" if "Invalid data" in detail else detail) from None
            raise SourceError(detail) from None

    def _stream_once(self, target: _Target, sampler: FrameSampler, timeline: _Timeline) -> None:
        """Open, decode until end of input (returns) or error (raises), handing sampled frames over."""
        container = self._open(target)
        starting = False  # holding one of the NVDEC start turns (``STARTS``) until the first picture
        try:
            if not container.streams.video:
                message = f"{self._safe_url}: no video stream"
                raise FatalSourceError(message) if target.is_file else SourceError(message)
            video = container.streams.video[0]
            self._frames = self._open_decoder(video)
            if self._decoder_name.startswith("nvdec") and NVDEC.backend == "ffmpeg":  # FFmpeg makes the session at the first pictures
                if not STARTS.take(self._stop_requested):
                    return
                starting = True
            last_frame_at = time.monotonic()  # after the turn: waiting for it is not a stall
            try:
                for packet in self._packets(container, target, timeline):
                    if self._stop_requested.is_set():
                        return
                    if packet is None or packet.stream_index == video.index:
                        for frame in self._decode(packet):
                            if starting:
                                starting = False
                                STARTS.give_back()
                            if self._state != StreamState.STREAMING:
                                with self._lock:  # the streaming status must carry this session's frame size
                                    self._width, self._height = frame.width, frame.height
                                self._log(
                                    logging.INFO, "streaming", "streaming %s (%dx%d)", self._safe_url, frame.width, frame.height
                                )
                                self._set_state(StreamState.STREAMING, None)
                            self._handle_frame(frame, sampler, timeline)
                            last_frame_at = time.monotonic()
                            if self._stop_requested.is_set():
                                return
                    silent_for = time.monotonic() - last_frame_at
                    if silent_for > self.cfg.watchdog_s:
                        raise _Stalled(f"{self._safe_url}: no frame for {self.cfg.watchdog_s:g} s (watchdog)")
            except (av.error.FFmpegError, OSError) as exc:
                silent_for = time.monotonic() - last_frame_at
                if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)) or silent_for >= 0.95 * self._read_timeout_s:
                    raise _Stalled(self._stall_message()) from None
                raise SourceError(self._describe(exc)) from None
            if not target.is_file and time.monotonic() - last_frame_at >= 0.95 * self._read_timeout_s:
                raise _Stalled(self._stall_message())  # FFmpeg reports an interrupted read as EOF
        finally:
            if starting:
                STARTS.give_back()
            if self._frames is not None:
                self._frames.close()
                self._frames = None
            self._release_ffmpeg_nvdec_session()
            container.close()

    def _packets(self, container: av.container.InputContainer, target: _Target, timeline: _Timeline) -> Iterator[av.Packet | None]:
        """The container's packets; a looping file goes on from its start after its end, same decoder.

        Seeking back costs little where reopening costs a new decoder (an NVDEC session is slow to
        make, and 96 looping clips made 15 a second). ``None`` marks the end of a pass: the decoder
        gives up the pictures it still holds and is ready for the next pass. A file that cannot seek
        returns at its end instead and is opened again, as before.
        """
        looping = target.is_file and self.cfg.loop
        while True:
            decoded_before = self._frames_decoded
            for packet in container.demux():
                if looping and packet.size == 0:
                    continue  # FFmpeg's end-of-stream packets: the pass's end is marked below instead
                yield packet
            if not looping or self._stop_requested.is_set() or self._frames_decoded == decoded_before:
                return  # the caller tells the end of the file, or a file without a decodable frame
            yield None
            timeline.new_pass()
            try:
                container.seek(0)
            except (av.error.FFmpegError, OSError) as exc:
                self._log(logging.DEBUG, "loop", "cannot seek %s (%s): opening it again", self._safe_url, exc)
                return
            self._log(logging.DEBUG, "loop", "looping %s", self._safe_url)

    def _stall_message(self) -> str:
        if self._read_timeout_s >= self.cfg.watchdog_s:
            return f"{self._safe_url}: no frame for {self.cfg.watchdog_s:g} s (watchdog)"
        return f"{self._safe_url}: no data for {self._read_timeout_s:g} s (read timeout)"

    def _open_decoder(self, video: av.video.stream.VideoStream) -> _FrameDecoder:
        """NVDEC when this source was given a GPU and the stream suits it, else FFmpeg on the CPU.

        A refusal (codec, pixel format, size, no free session) is logged once per reason and
        asked again at the next connection, when a session may have become free.
        """
        if self._ffmpeg_session and self._nvdec_gpu is not None:  # the container was opened with FFmpeg's NVDEC
            from stream.sources.ffmpeg_nvdec import FfmpegNvdecDecoder

            self._ffmpeg_session = False  # the decoder holds the session now and releases it on close
            ffmpeg_decoder = FfmpegNvdecDecoder(video, self._nvdec_gpu, self.cfg.skip_frames)
            self._decoder_name = ffmpeg_decoder.name
            return ffmpeg_decoder
        if self._nvdec_gpu is not None and NVDEC.backend != "ffmpeg":
            from stream.sources.nvdec import NvdecDecoder, NvdecUnavailable

            try:
                decoder: _FrameDecoder = NvdecDecoder(video, self._nvdec_gpu, self.cfg.skip_frames)
            except NvdecUnavailable as exc:
                self._note_nvdec_refusal(str(exc))
            else:
                self._decoder_name = f"nvdec:{self._nvdec_gpu}"
                return decoder
        self._decoder_name = "cpu"
        return _CpuDecoder(video, self.cfg.skip_frames)

    def _decode(self, packet: av.Packet | None) -> list[Any]:
        """Decode one packet (None: a looping file's pass ended); a corrupt packet costs its frames, not the connection."""
        assert self._frames is not None
        try:
            return self._frames.decode(packet) if packet is not None else self._frames.end_pass()
        except av.error.InvalidDataError as exc:
            self._log(logging.DEBUG, "decode_error", "skipping undecodable packet (%s)", exc.strerror)
            return []

    def _handle_frame(self, frame: av.VideoFrame, sampler: FrameSampler, timeline: _Timeline) -> None:
        pts_s = timeline.place(frame.time)
        if self._realtime:
            timeline.pace(pts_s, self._stop_requested)
        now, wall = time.monotonic(), time.time()
        with self._lock:
            self._frames_decoded += 1
            self._width, self._height = frame.width, frame.height
            self._fps.record(now)
        if not sampler.accept(pts_s):
            return
        assert self._frames is not None
        image = self._frames.to_image(frame)  # only sampled frames pay for RGB
        name = getattr(self._frames, "name", None)  # FFmpeg decodes a stream NVDEC refuses in software
        if name is not None and name != self._decoder_name:
            if name == "cpu":
                self._note_nvdec_refusal(str(getattr(self._frames, "refusal", "NVDEC did not take this stream")))
            self._decoder_name = name
        with self._lock:
            sampled = SampledFrame(image, pts_s, now, wall, self._frames_sampled)
            self._frames_sampled += 1
            if self._slot is not None:
                self._frames_dropped += 1
            self._slot = sampled
        self._post(self._wake_consumer)
        if self._backpressure:  # a file waits for its reader: no frame of it is ever skipped
            with self._lock:
                while self._slot is not None and not self._stop_requested.is_set():
                    self._lock.wait(0.5)

    def _wake_consumer(self) -> None:
        if self._frame_ready is not None:
            self._frame_ready.set()

    def _describe(self, exc: BaseException) -> str:
        """``<redacted url>: <reason>`` without the raw URL that FFmpeg errors embed."""
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{self._safe_url}: {self._scrub(reason)}"

    def _scrub(self, text: str) -> str:
        text = text.replace(self.cfg.url, self._safe_url)
        password = self._target.password if self._target is not None else None
        if password and len(password) >= 3:
            text = text.replace(password, "***")
        return text


class _FrameDecoder(Protocol):
    """Turns one connection's packets into pictures (with ``time``, ``width``, ``height``) and sampled ones into RGB."""

    def decode(self, packet: av.Packet) -> list[Any]: ...

    def end_pass(self) -> list[Any]:
        """The pictures still held at the end of the input, the decoder then ready for the input from its start."""
        ...

    def to_image(self, frame: Any) -> Any: ...

    def close(self) -> None: ...


class _CpuDecoder:
    """FFmpeg's software decoder; ``skip_frames`` maps to its ``skip_frame`` (non-reference or non-key pictures)."""

    def __init__(self, video: av.video.stream.VideoStream, skip_frames: str) -> None:
        self._video = video
        if skip_frames != "none":  # decode less at low sample rates: frames nothing refers to
            video.codec_context.skip_frame = skip_frames.upper()

    @staticmethod
    def decode(packet: av.Packet) -> list[av.VideoFrame]:
        return packet.decode()  # type: ignore[return-value]

    def end_pass(self) -> list[av.VideoFrame]:
        return drain(self._video)

    @staticmethod
    def to_image(frame: av.VideoFrame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        pass


class _Timeline:
    """Keeps a file's pts continuous across loops and paces realtime decoding on that clock."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._pass_start: float | None = None  # timeline end when a new pass began
        self._last: float | None = None
        self._step = 0.04
        self._anchor: tuple[float, float] | None = None  # (pts, monotonic) pacing reference

    def new_pass(self) -> None:
        """The file starts again: its next first frame follows the previous last one."""
        if self._last is not None:
            self._pass_start = self._last + self._step

    def place(self, raw_pts: float | None) -> float:
        """The frame's pts in seconds on the continuous timeline; missing pts are extrapolated."""
        if raw_pts is None:
            raw_pts = (self._last - self._offset + self._step) if self._last is not None else 0.0
        if self._pass_start is not None:
            self._offset = self._pass_start - raw_pts
            self._pass_start = None
        pts = raw_pts + self._offset
        if self._last is not None and 0 < pts - self._last < 1.0:
            self._step = pts - self._last
        self._last = pts
        return pts

    def pace(self, pts: float, stop: threading.Event) -> None:
        """Sleep until ``pts`` is due on the wall clock (stop-aware)."""
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (pts, now)
            return
        due = self._anchor[1] + (pts - self._anchor[0])
        wait = due - now
        if wait > _MAX_PACE_SLEEP_S or wait < -_MAX_PACE_LAG_S:
            self._anchor = (pts, now)  # pts jumped, or we fell far behind: restart the clock here
            return
        if wait > 0:
            stop.wait(wait)
