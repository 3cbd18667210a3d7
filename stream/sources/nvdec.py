"""Hardware decoding on the GPU's NVDEC engines, fed by PyAV's demuxer.

PyAV keeps doing what it does well for every source (RTSP options, timeouts, reconnects, the
watchdog); only the packets go to NVDEC (NVIDIA's ``PyNvVideoCodec``) instead of FFmpeg's
software decoder. Decoded pictures stay in GPU memory as NV12; only the sampled ones are
converted to RGB, on the GPU, and handed over as CUDA tensors, so a 1080p frame never crosses
to the host before its scores. Pictures nothing refers to are dropped from the bitstream
before decoding when ``skip_frames`` asks for it (NVDEC has no skip switch).

A stream NVDEC cannot take (codec, pixel format, size, no free decoder session) is decoded on
the CPU instead, with one logged reason; ``NvdecUnavailable`` carries it.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from stream.sources.base import SourceError
from stream.sources.bitstream import ReferenceTracker
from stream.sources.config import NVDEC

log = logging.getLogger(__name__)

SUPPORTED_CODECS = {"h264": "H264", "hevc": "HEVC"}
SUPPORTED_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "nv12"})  # 8-bit 4:2:0: NV12 out
MAX_SIDE = 4096  # NVDEC's H.264 limit on Hopper (H.265: 8192); larger goes to the CPU


class NvdecUnavailable(Exception):
    """This stream cannot be decoded on NVDEC; the message says why (the CPU decodes it instead)."""


_module: Any = None
_import_error: str | None = None
_import_lock = threading.Lock()


def nvdec_module() -> Any:
    """``PyNvVideoCodec``, imported once; raises NvdecUnavailable naming what is missing."""
    global _module, _import_error
    with _import_lock:
        if _module is None and _import_error is None:
            try:
                _module = importlib.import_module("PyNvVideoCodec")
            except Exception as exc:  # noqa: BLE001 - ImportError, or its RuntimeError when the driver's video library is absent
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                _import_error = f"PyNvVideoCodec not usable ({first_line})"
        if _module is None:
            raise NvdecUnavailable(_import_error or "PyNvVideoCodec not usable")
        return _module


def nvdec_available() -> str | None:
    """None when NVDEC can be used here, else the reason it cannot."""
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        nvdec_module()
    except NvdecUnavailable as exc:
        return str(exc)
    return None


class SessionBudget:
    """Decoder sessions open in this process per GPU: beyond ``NVDEC.sessions_per_gpu`` the next streams decode on the CPU.

    NVDEC sessions cost GPU memory (a 1080p H.264 session holds its surfaces); the driver's
    own refusal is handled too, this cap only makes the point where it happens a setting.
    """

    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, gpu: int) -> None:
        limit = NVDEC.sessions_per_gpu
        with self._lock:
            if self._open.get(gpu, 0) >= limit:
                raise NvdecUnavailable(f"all {limit} NVDEC sessions of cuda:{gpu} are in use")
            self._open[gpu] = self._open.get(gpu, 0) + 1

    def release(self, gpu: int) -> None:
        with self._lock:
            self._open[gpu] = max(self._open.get(gpu, 0) - 1, 0)

    def in_use(self, gpu: int) -> int:
        with self._lock:
            return self._open.get(gpu, 0)


SESSIONS = SessionBudget()
_CREATING = threading.BoundedSemaphore(4)  # decoder sessions created at once (staggered start)


class StartTurns:
    """Streams of this process setting up their NVDEC session at once: a few at a time, the others wait their turn.

    FFmpeg makes a stream's session while it decodes the first pictures. Started all at once, they
    stall together: on a two-H100 host, 112 streams starting in each of two processes, and 150 in one,
    sat past the 10 s watchdog (70 and 20 stalls in one run each), and every reconnect made a session
    anew. A stream holds its turn until its first picture comes out (or its connection ends); its
    watchdog starts once it has the turn.
    """

    def __init__(self, turns: int = 4) -> None:
        self._turns = threading.BoundedSemaphore(turns)
        self._lock = threading.Lock()
        self._holding = 0
        self.most_at_once = 0  # for tests and diagnostics

    def take(self, stop: threading.Event) -> bool:
        """Wait for a turn; False if ``stop`` was set first (then there is nothing to give back)."""
        while not stop.is_set():
            if self._turns.acquire(timeout=0.1):
                with self._lock:
                    self._holding += 1
                    self.most_at_once = max(self.most_at_once, self._holding)
                return True
        return False

    def give_back(self) -> None:
        with self._lock:
            self._holding -= 1
        self._turns.release()


STARTS = StartTurns()


@dataclass
class GpuFrame:
    """A decoded picture still in the decoder's GPU surface (valid until the next ``decode``)."""

    time: float | None
    width: int
    height: int
    surface: Any


class NvdecDecoder:
    """One NVDEC session for one video stream; ``decode(packet)`` returns the pictures it completes.

    ``skip_frames``: ``nonref`` drops access units no picture refers to before they reach the
    decoder, ``nonkey`` everything but keyframes (as FFmpeg's ``skip_frame`` does on the CPU).
    ``to_image`` turns a picture into an RGB uint8 HWC CUDA tensor on this decoder's CUDA
    stream, and waits for that stream only (never the whole device).
    """

    def __init__(self, stream: av.video.stream.VideoStream, gpu: int, skip_frames: str = "none") -> None:
        codec = stream.codec_context.name
        if codec not in SUPPORTED_CODECS:
            raise NvdecUnavailable(f"codec {codec} is not decoded on NVDEC here (H.264 and H.265 are)")
        pix_fmt = stream.codec_context.pix_fmt
        if pix_fmt is not None and pix_fmt not in SUPPORTED_PIXEL_FORMATS:
            raise NvdecUnavailable(f"pixel format {pix_fmt} is not decoded on NVDEC here (8-bit 4:2:0 is)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if max(width, height) > MAX_SIDE:
            raise NvdecUnavailable(f"{width}x{height} is larger than NVDEC's {MAX_SIDE} px")
        import torch

        nvc = nvdec_module()
        self.gpu = gpu
        self.device = torch.device("cuda", gpu)
        self.time_base: Fraction = stream.time_base or Fraction(1, 90_000)
        self._torch = torch
        self._cuda_stream = torch.cuda.Stream(self.device)
        self._nvc = nvc
        self._skip = ReferenceTracker(codec) if skip_frames == "nonref" else None
        self._keyframes_only = skip_frames == "nonkey"
        self._bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        self._next_pts = 0
        self.skipped = 0
        SESSIONS.acquire(gpu)
        try:
            # NVDEC's native output latency (pictures come out a few decodes later): a zero-latency
            # Decode waits for the picture just submitted, holding the GIL while NVDEC is busy
            kwargs: dict[str, Any] = {
                "gpuid": gpu,
                "codec": getattr(nvc.cudaVideoCodec, SUPPORTED_CODECS[codec]),
                "cudacontext": 0,
                "cudastream": self._cuda_stream.cuda_stream,
                "usedevicememory": True,
            }
            with _CREATING, torch.cuda.device(self.device):  # a few at a time: 150 at once stall every one of them
                self._decoder = nvc.CreateDecoder(**kwargs)
        except NvdecUnavailable:
            SESSIONS.release(gpu)
            raise
        except Exception as exc:  # noqa: BLE001 - the binding raises plain RuntimeErrors (no free session, unsupported stream)
            SESSIONS.release(gpu)
            raise NvdecUnavailable(f"NVDEC refused the stream: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        self._closed = False

    def decode(self, packet: av.Packet | None) -> list[GpuFrame]:
        """Decode one demuxed packet (None flushes the pictures the decoder still holds).

        A failing session raises ``SourceError``: the source reconnects with its usual backoff
        and a new session is created, as for any other broken connection.
        """
        try:
            return self._decode(packet)
        except av.error.FFmpegError:
            raise
        except Exception as exc:  # noqa: BLE001 - the binding raises plain RuntimeErrors (CUDA errors, lost sessions)
            raise SourceError(f"NVDEC decoding failed: {type(exc).__name__}: {exc}") from None

    def _decode(self, packet: av.Packet | None) -> list[GpuFrame]:
        frames: list[GpuFrame] = []
        for annexb in self._bsf.filter(packet):
            data = bytes(annexb)
            if not data:
                continue
            if (self._keyframes_only and not annexb.is_keyframe) or (self._skip is not None and self._skip.droppable(data)):
                self.skipped += 1
                continue
            pts = annexb.pts if annexb.pts is not None else annexb.dts
            if pts is None:
                pts = self._next_pts
            self._next_pts = pts + 1
            frames.extend(self._submit(data, pts))
        if packet is None:
            frames.extend(self._submit(b"", 0))
        return frames

    def end_pass(self) -> list[GpuFrame]:
        """The pictures NVDEC still holds (end of stream), the bitstream filter reset for the input's start."""
        frames = self.decode(None)
        self._bsf.flush()
        return frames

    def _submit(self, data: bytes, pts: int) -> list[GpuFrame]:
        buffer = ctypes.create_string_buffer(data, len(data)) if data else None
        packet = self._nvc.PacketData()
        packet.bsl_data = ctypes.addressof(buffer) if buffer is not None else 0
        packet.bsl = len(data)
        packet.pts = pts
        with self._torch.cuda.device(self.device):
            decoded = self._decoder.Decode(packet)
        out = []
        for surface in decoded:
            ts = surface.getPTS() if hasattr(surface, "getPTS") else getattr(surface, "timestamp", None)
            time = float(ts * self.time_base) if ts is not None else None
            width, height = self._frame_size(surface)
            out.append(GpuFrame(time, width, height, surface))
        return out

    def _frame_size(self, surface: Any) -> tuple[int, int]:
        shape = surface.shape if hasattr(surface, "shape") else None
        if shape and len(shape) >= 2:
            return int(shape[1]), int(shape[0]) * 2 // 3
        return self._decoder.GetWidth(), self._decoder.GetHeight()

    def to_image(self, frame: GpuFrame) -> Any:
        """RGB uint8 (H, W, 3) CUDA tensor of ``frame``, ready to use from any CUDA stream."""
        from detector.gpu_preprocessing import nv12_to_rgb

        torch = self._torch
        with torch.cuda.device(self.device), torch.cuda.stream(self._cuda_stream):
            nv12 = torch.from_dlpack(frame.surface)
            if nv12.ndim == 3 and nv12.shape[-1] == 1:
                nv12 = nv12[..., 0]
            rgb = nv12_to_rgb(nv12[: frame.height * 3 // 2, : frame.width])
        self._cuda_stream.synchronize()  # the surface is reused by the next decode; the RGB copy is complete
        return rgb

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._decoder = None
            SESSIONS.release(self.gpu)
