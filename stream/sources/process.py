"""A video source decoded in a child process.

Decoding 1080p H.264 in dozens of threads of the analyzer process makes them
fight the inference engine for the GIL: on a 16-core box, 64 threaded streams
starved the engine (see README, Capacity).  Here a child interpreter runs the same
``VideoSource`` (reconnects, watchdog, sampling by pts) and hands only the
sampled frames over through a small ring of shared-memory slots; the parent
copies a frame out and frees its slot at once.  A decoder that crashes takes
only its own stream down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from stream.sources.base import SampledFrame, StateCallback, StreamState
from stream.sources.child import ChildSource
from stream.sources.config import StreamConfig
from stream.sources.url import VideoSource

log = logging.getLogger(__name__)

SLOTS = 3


class _Ring:
    """The child's shared-memory slots for one frame shape (a new ring when the resolution changes)."""

    def __init__(self, shape: tuple[int, ...], slots: int) -> None:
        self.shape = shape
        self.nbytes = int(np.prod(shape))
        self.shm = SharedMemory(create=True, size=self.nbytes * slots)
        self.free = set(range(slots))

    def write(self, slot: int, image: np.ndarray) -> None:
        np.ndarray(self.shape, np.uint8, buffer=self.shm.buf, offset=slot * self.nbytes)[:] = image


async def _child(cfg_data: dict[str, Any], conn: Connection, backoff: tuple[float, float]) -> None:
    cfg = StreamConfig.model_validate(cfg_data)
    loop = asyncio.get_running_loop()
    source: VideoSource

    def on_state(state: StreamState, detail: str | None) -> None:
        conn.send(("state", state.value, detail, source.stats.to_dict()))

    source = VideoSource(cfg, on_state, backoff_min_s=backoff[0], backoff_max_s=backoff[1])
    rings: dict[str, _Ring] = {}
    ring: _Ring | None = None
    dropped = 0
    slot_freed = asyncio.Event()

    def on_message() -> None:
        while conn.poll():
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone
                loop.create_task(source.stop())
                loop.remove_reader(conn.fileno())
                return
            if message[0] == "free" and message[1] in rings:
                rings[message[1]].free.add(message[2])
                slot_freed.set()
            elif message[0] == "stop":
                loop.create_task(source.stop())

    loop.add_reader(conn.fileno(), on_message)
    source.start()
    conn.send(("mode", source.holds_back))
    try:
        while (frame := await source.next_frame()) is not None:
            if ring is None or ring.shape != frame.image.shape:
                ring = _Ring(frame.image.shape, SLOTS)
                rings[ring.shm.name] = ring
            while not ring.free and source.holds_back:  # a file read as fast as consumed waits, as in a thread
                slot_freed.clear()
                await slot_freed.wait()
            if not ring.free:
                dropped += 1  # a live feed: the parent has not taken the older frames yet, newest only
                continue
            slot = ring.free.pop()
            ring.write(slot, frame.image)
            stats = source.stats.to_dict()
            stats["frames_dropped"] += dropped
            conn.send(("frame", ring.shm.name, slot, ring.shape, frame.pts_s, frame.arrival_monotonic, frame.arrival_wall, frame.index, stats))
    finally:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("end", source.stats.to_dict()))
        for r in rings.values():
            r.shm.close()
            with contextlib.suppress(FileNotFoundError):
                r.shm.unlink()


def _child_main(fd: int) -> None:
    """Entry point of ``python -m stream.sources.process FD``: the first message carries the job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a decoder stops
    conn = Connection(fd)
    cfg_data, backoff, log_level = conn.recv()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)-7s %(name)s[decoder]: %(message)s")
    asyncio.run(_child(cfg_data, conn, tuple(backoff)))


class ProcessVideoSource(ChildSource):
    """Same interface as ``VideoSource`` (start, next_frame, stop, state, stats), decoding in a child process."""

    def __init__(self, cfg: StreamConfig, on_state: StateCallback | None = None, *, backoff_min_s: float = 1.0, backoff_max_s: float = 30.0) -> None:
        super().__init__(cfg, on_state)
        self._backoff = (backoff_min_s, backoff_max_s)
        self._send_lock = threading.Lock()
        self._segments: dict[str, SharedMemory] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._bind_loop()
        # A fresh interpreter (never a fork of a process that may hold CUDA state), started with -m so
        # that, unlike multiprocessing's spawn, it does not re-import the parent's __main__ (torch and all).
        parent_sock, child_sock = socket.socketpair()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "stream.sources.process", str(child_sock.fileno())], pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._send((self.cfg.model_dump(mode="json"), list(self._backoff), logging.getLogger().level))
        self._reader = threading.Thread(target=self._read, name=f"decoder-reader-{self.name}", daemon=True)
        self._reader.start()

    # ---- reader thread ------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError, BrokenPipeError):
            assert self._conn is not None
            self._conn.send(message)

    def _segment(self, name: str) -> SharedMemory:
        segment = self._segments.get(name)
        if segment is None:
            segment = SharedMemory(name=name)
            # the child owns and unlinks it; our own resource tracker must not try again at exit
            resource_tracker.unregister(segment._name, "shared_memory")  # noqa: SLF001
            self._segments[name] = segment
        return segment

    def _read(self) -> None:
        assert self._conn is not None and self._loop is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "frame":
                _, name, slot, shape, pts_s, arrival_mono, arrival_wall, index, stats = message
                nbytes = int(np.prod(shape))
                image = np.ndarray(shape, np.uint8, buffer=self._segment(name).buf, offset=slot * nbytes).copy()
                # the slot is freed when the consumer takes the frame, so a file read as fast as consumed waits for it
                release = functools.partial(self._send, ("free", name, slot))
                self._post(self._deliver, SampledFrame(image, pts_s, arrival_mono, arrival_wall, index), stats, release)
            elif kind == "mode":
                self._holds_back = bool(message[1])
            elif kind == "state":
                self._post(self._change_state, StreamState(message[1]), message[2], message[3])
            elif kind == "end":
                self._post(self._set_stats, message[1])
                break
        code = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(5.0)  # reap it, so a crash shows as its exit code
        self._post(self._end, code, "decoder process")

    async def stop(self, join_timeout_s: float = 5.0) -> None:
        self._send(("stop",))
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                await asyncio.to_thread(proc.wait, join_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 2.0)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 2.0)
        for segment in self._segments.values():
            with contextlib.suppress(Exception):
                segment.close()
        self._segments.clear()
        self._ended = True
        if self._ready is not None:
            self._ready.set()


__all__ = ["ProcessVideoSource"]

if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
