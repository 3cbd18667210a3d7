"""Decoder worker processes: a few per GPU host many streams each, frames handed over in GPU memory.

Demuxing and feeding a hardware decoder is Python work per packet (4,500 packets a second for
150 cameras at 30 fps). In the analyzer's own process that work holds the GIL so often that the
inference threads starve (measured on an H100: 48 NVDEC streams in-process fell behind at 55 of
96 samples/s with the GPU 22 % busy). Here each worker process runs many streams (the same
``VideoSource``, NVDEC, reconnects, watchdog and sampling), and a sampled RGB frame crosses to
the analyzer through a per-stream ring of GPU slots shared once by CUDA IPC: per frame only a
slot number travels, the analyzer copies the slot on the GPU and frees it. A worker holds one
CUDA context, so a handful of workers serve hundreds of streams.

A stream the worker's NVDEC refuses (codec, size, sessions) is decoded on the CPU there and its
frames come over as host arrays, with the reason logged as for any NVDEC source. A pool without a
GPU (``gpu=None``) decodes everything on the CPU that way: the same protocol, testable anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from stream.sources.base import SampledFrame, StateCallback, StreamState
from stream.sources.child import ChildSource
from stream.sources.config import StreamConfig

log = logging.getLogger(__name__)

SLOTS = 3


def default_workers(backend: str = "ffmpeg") -> int:
    """Worker processes per GPU when not configured.

    FFmpeg decodes with the GIL released, so one process carries dozens of streams: 2 per GPU
    (measured on an H100: 2 workers fed 96 streams to the engine at 191.9 of 192 samples/s, 8
    workers 179.2; each worker is a CUDA context that time-slices the GPU with the engine's).
    PyNvVideoCodec holds the GIL while NVDEC works: half the cores, at most 8.
    """
    if backend == "ffmpeg":
        return 2
    return max(1, min(8, (os.cpu_count() or 2) // 2))


# ---------------------------------------------------------------------------------------- worker side
class _Worker:
    """One worker process: many streams on one GPU, one connection to the analyzer."""

    def __init__(self, conn: Connection, gpu: int | None) -> None:
        import torch
        import torch.multiprocessing  # noqa: F401 - registers CUDA tensor pickling (IPC handles)

        self.torch = torch
        self.conn = conn
        self.gpu = gpu
        self.device = torch.device("cuda", gpu) if gpu is not None else None
        if self.device is not None:
            torch.cuda.set_device(self.device)
        self.sources: dict[str, Any] = {}
        self.rings: dict[str, tuple[int, Any, set[int]]] = {}  # stream -> (ring id, (SLOTS, H, W, 3) tensor, free slots)
        self.ring_ids = 0
        self.freed: dict[str, asyncio.Event] = {}
        self.send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock, contextlib.suppress(OSError, ValueError, BrokenPipeError):
            self.conn.send_bytes(bytes(ForkingPickler.dumps(message)))

    def on_message(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.conn.poll():
            try:
                message = ForkingPickler.loads(self.conn.recv_bytes())
            except (EOFError, OSError):  # the analyzer is gone: stop everything
                for source in self.sources.values():
                    loop.create_task(source.stop())
                loop.remove_reader(self.conn.fileno())
                loop.call_later(3.0, loop.stop)
                return
            kind, name = message[0], message[1]
            if kind == "open":
                loop.create_task(self.run_stream(name, message[2], message[3]))
            elif kind == "free" and name in self.rings and self.rings[name][0] == message[2]:
                self.rings[name][2].add(message[3])
                self.freed[name].set()
            elif kind == "stop" and name in self.sources:
                loop.create_task(self.sources[name].stop())

    async def run_stream(self, name: str, cfg_data: dict[str, Any], backoff: list[float]) -> None:
        from stream.sources.url import VideoSource

        cfg = StreamConfig.model_validate(cfg_data)
        source: VideoSource

        def on_state(state: StreamState, detail: str | None) -> None:
            self.send(("state", name, state.value, detail, source.stats.to_dict()))

        source = VideoSource(cfg, on_state, backoff_min_s=backoff[0], backoff_max_s=backoff[1], nvdec_gpu=self.gpu)
        self.sources[name] = source
        self.freed[name] = asyncio.Event()
        source.start()
        self.send(("mode", name, source.holds_back))
        dropped = 0
        try:
            while (frame := await source.next_frame()) is not None:
                stats = source.stats.to_dict()
                meta = (frame.pts_s, frame.arrival_monotonic, frame.arrival_wall, frame.index)
                if not isinstance(frame.image, self.torch.Tensor):  # decoded on the CPU (NVDEC refused this stream)
                    stats["frames_dropped"] += dropped
                    self.send(("host_frame", name, frame.image, *meta, stats))
                    continue
                ring = self.rings.get(name)
                if ring is None or tuple(ring[1].shape[1:]) != tuple(frame.image.shape):
                    self.ring_ids += 1
                    tensor = self.torch.empty((SLOTS, *frame.image.shape), dtype=self.torch.uint8, device=self.device)
                    ring = self.rings[name] = (self.ring_ids, tensor, set(range(SLOTS)))
                    self.send(("ring", name, ring[0], tensor))  # CUDA IPC: the analyzer maps it once
                while not ring[2] and source.holds_back:  # a file read as fast as consumed waits
                    self.freed[name].clear()
                    await self.freed[name].wait()
                if not ring[2]:
                    dropped += 1  # a live feed: the analyzer has not taken the older frames yet
                    continue
                slot = ring[2].pop()
                ring[1][slot].copy_(frame.image)
                self.torch.cuda.current_stream(self.device).synchronize()
                stats["frames_dropped"] += dropped
                self.send(("frame", name, ring[0], slot, *meta, stats))
        finally:
            self.send(("end", name, source.stats.to_dict()))
            self.sources.pop(name, None)
            self.rings.pop(name, None)


async def _worker_main_async(conn: Connection, gpu: int | None) -> None:
    worker = _Worker(conn, gpu)
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), worker.on_message, loop)
    await asyncio.Event().wait()  # runs until the analyzer goes away (then the loop is stopped)


def _worker_main(fd: int, gpu: int | None) -> None:
    """Entry point of ``python -m stream.sources.workers FD GPU`` (GPU: an index, or ``cpu``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the analyzer decides when streams stop
    from stream.sources.config import NVDEC

    NVDEC.backend = os.environ.get("DEEPFAKE_STREAM_NVDEC_BACKEND", NVDEC.backend)  # type: ignore[assignment]
    logging.basicConfig(level=int(os.environ.get("DEEPFAKE_STREAM_LOG_LEVEL", logging.INFO)), format="%(asctime)s %(levelname)-7s %(name)s[decoder-worker]: %(message)s")
    with contextlib.suppress(RuntimeError):  # "Event loop stopped before Future completed" when the analyzer left
        asyncio.run(_worker_main_async(Connection(fd), gpu))


# ---------------------------------------------------------------------------------------- analyzer side
class _WorkerHandle:
    """The analyzer's end of one worker process: its connection, its reader thread, its streams."""

    def __init__(self, gpu: int | None, index: int) -> None:
        parent_sock, child_sock = socket.socketpair()
        from stream.sources.config import NVDEC

        env = {**os.environ, "DEEPFAKE_STREAM_LOG_LEVEL": str(logging.getLogger().getEffectiveLevel()), "DEEPFAKE_STREAM_NVDEC_BACKEND": NVDEC.backend}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.sources.workers", str(child_sock.fileno()), "cpu" if gpu is None else str(gpu)],
            pass_fds=[child_sock.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.sources: dict[str, PooledSource] = {}
        self.lock = threading.Lock()
        self.name = f"decoder-worker-{'cpu' if gpu is None else gpu}.{index}"
        self.reader = threading.Thread(target=self._read, name=self.name, daemon=True)
        self.reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError, BrokenPipeError):
            self.conn.send_bytes(bytes(ForkingPickler.dumps(message)))

    def shut_down(self) -> None:
        """End the connection in order: the socket is shut down both ways, so the worker and this handle's
        reader both see its end; the reader then closes it (closing it here would pull the descriptor
        from under the reader's blocked read)."""
        with contextlib.suppress(OSError, ValueError):
            with socket.socket(fileno=os.dup(self.conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    def _read(self) -> None:
        import torch
        import torch.multiprocessing  # noqa: F401 - registers CUDA tensor unpickling (IPC handles)

        copy_stream = None
        try:
            while True:
                try:
                    message = ForkingPickler.loads(self.conn.recv_bytes())
                except (EOFError, OSError):  # the worker left, or the pool shut the socket down
                    break
                source = self.sources.get(message[1])
                if source is None:
                    continue
                if message[0] == "frame" and copy_stream is None:
                    copy_stream = torch.cuda.Stream(source.ring_device())
                source.on_message(message, copy_stream)
        finally:
            with self.lock:  # not under a send
                self.conn.close()  # only this thread closes it: never under its own read
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.proc.wait(5.0)  # reap it, so a crash shows as its exit code
        for source in list(self.sources.values()):
            source.on_worker_gone(code)


class DecoderPool:
    """The worker processes of one GPU (or of the CPU); a new stream goes to the worker with the fewest streams."""

    def __init__(self, gpu: int | None, workers: int) -> None:
        self.gpu = gpu
        self.size = max(workers, 1)
        self.workers: list[_WorkerHandle] = []
        self.lock = threading.Lock()

    def attach(self, source: PooledSource) -> _WorkerHandle:
        with self.lock:
            self.workers = [w for w in self.workers if w.proc.poll() is None]
            if len(self.workers) < self.size:
                self.workers.append(_WorkerHandle(self.gpu, len(self.workers)))
            worker = min(self.workers, key=lambda w: len(w.sources))
            worker.sources[source.name] = source
            return worker

    def detach(self, source: PooledSource, worker: _WorkerHandle) -> None:
        with self.lock:
            if worker.sources.get(source.name) is source:
                del worker.sources[source.name]

    def streams(self) -> int:
        with self.lock:
            return sum(len(w.sources) for w in self.workers)

    def close(self) -> None:
        with self.lock:
            workers, self.workers = self.workers, []
        for worker in workers:
            worker.shut_down()
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(5.0)
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.reader.join(10.0)


_POOLS: dict[int | None, DecoderPool] = {}
_POOLS_LOCK = threading.Lock()


def decoder_pool(gpu: int | None, workers: int) -> DecoderPool:
    """The pool of ``gpu`` (None: CPU decoding), made at its first use; later calls keep its size."""
    with _POOLS_LOCK:
        pool = _POOLS.get(gpu)
        if pool is None:
            pool = _POOLS[gpu] = DecoderPool(gpu, workers)
        return pool


def close_pools() -> None:
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


class PooledSource(ChildSource):
    """Same interface as ``VideoSource``, decoded in a shared worker process; NVDEC frames arrive as CUDA tensors."""

    def __init__(self, cfg: StreamConfig, pool: DecoderPool, on_state: StateCallback | None = None, *, backoff_min_s: float = 1.0, backoff_max_s: float = 30.0) -> None:
        super().__init__(cfg, on_state)
        self._pool = pool
        self._backoff = (backoff_min_s, backoff_max_s)
        self._rings: dict[int, Any] = {}
        self._worker: _WorkerHandle | None = None

    def ring_device(self) -> Any:
        import torch

        return torch.device("cuda", self._pool.gpu)

    def start(self) -> None:
        self._bind_loop()
        self._worker = self._pool.attach(self)
        self._worker.send(("open", self.name, self.cfg.model_dump(mode="json"), list(self._backoff)))

    # ---- reader thread (the worker's) -------------------------------------------------
    def on_message(self, message: tuple[Any, ...], copy_stream: Any) -> None:
        kind = message[0]
        if kind == "frame":
            _, _, ring_id, slot, pts_s, mono, wall, index, stats = message
            import torch

            with torch.cuda.stream(copy_stream):
                image = self._rings[ring_id][slot].clone()  # a GPU copy; the slot goes back at once
            copy_stream.synchronize()
            assert self._worker is not None
            self._worker.send(("free", self.name, ring_id, slot))
            self._post(self._deliver, SampledFrame(image, pts_s, mono, wall, index), stats)
        elif kind == "host_frame":
            _, _, image, pts_s, mono, wall, index, stats = message
            self._post(self._deliver, SampledFrame(image, pts_s, mono, wall, index), stats)
        elif kind == "ring":
            self._rings[message[2]] = message[3]
        elif kind == "mode":
            self._holds_back = bool(message[2])
        elif kind == "state":
            self._post(self._change_state, StreamState(message[2]), message[3], message[4])
        elif kind == "end":
            self._post(self._set_stats, message[2])
            self._post(self._finish, None)

    def on_worker_gone(self, exit_code: int | None) -> None:
        self._post(self._finish, exit_code, True)

    # ---- loop thread ------------------------------------------------------------------
    def _finish(self, exit_code: int | None, unexpected: bool = False) -> None:
        if self._ended:
            return
        if self._worker is not None:
            self._pool.detach(self, self._worker)
        self._rings.clear()
        self._end(exit_code, "decoder worker", unexpected=unexpected)

    async def stop(self, join_timeout_s: float = 5.0) -> None:
        if self._worker is not None and not self._ended:
            self._worker.send(("stop", self.name))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + join_timeout_s
            while not self._ended and loop.time() < deadline:
                assert self._ready is not None
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), 0.2)
        if not self._ended:
            self._finish(None)


__all__ = ["DecoderPool", "PooledSource", "close_pools", "decoder_pool", "default_workers"]

if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), None if sys.argv[2] == "cpu" else int(sys.argv[2]))
