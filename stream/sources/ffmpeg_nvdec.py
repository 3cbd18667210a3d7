"""NVDEC through FFmpeg's own hardware decoding (PyAV ``hwaccel``), frames kept on the GPU.

The other NVDEC backend (``nvdec.py``, PyNvVideoCodec) holds the GIL while it waits for the
hardware, so the streams of one process take turns. PyAV decodes with the GIL released and
FFmpeg's NVDEC hwaccel does the work inside that call, so here the streams of one process decode
side by side: on an H100, 96 paced 1080p streams in one process at 1.4 cores, and two worker
processes fed 96 streams to the engine ahead of eight PyNvVideoCodec workers (README Capacity).
FFmpeg also keeps doing what it does on the CPU: ``skip_frame`` (non-reference pictures), and,
for a stream NVDEC cannot take, software decoding on its own (``allow_software_fallback``): such
a stream's frames come out as host arrays, and the reason is logged once.

Decoded pictures are CUDA frames of FFmpeg's pool in torch's own context of the GPU (its
primary context). FFmpeg is handed that context as the thread's current one (``current_ctx``):
asked to retain the primary context itself (``primary_ctx``, PyAV's default) it refuses once
torch has created it, because torch's scheduling flags are not the ones FFmpeg wants ("Primary
context already active with incompatible flags", measured on an H100). A sampled picture's two
NV12 planes are borrowed through DLPack, converted to RGB on the legacy default stream (where
FFmpeg copied the picture), and that stream is waited for before the picture goes back to
FFmpeg's pool; unsampled pictures never leave the pool.
"""

from __future__ import annotations

import functools
from typing import Any

import av

from stream.sources.nvdec import MAX_SIDE, SESSIONS, SUPPORTED_CODECS
from stream.sources.rewind import drain


@functools.cache
def ffmpeg_nvdec_available(gpu: int = 0) -> str | None:
    """None when FFmpeg can decode on ``gpu``'s NVDEC here, else the reason it cannot (checked once per GPU).

    The device context is made once up front: without it a failure to reach CUDA would only show
    when a stream opens, indistinguishable from a stream's own error.
    """
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return "no CUDA device"
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        return "this PyAV's FFmpeg was built without CUDA hardware decoding"
    try:
        previous = make_torch_context_current(gpu)
        try:
            hwaccel(gpu).create(av.Codec("h264", "r"))
        finally:
            torch.cuda.set_device(previous)
    except Exception as exc:  # noqa: BLE001 - FFmpeg's error for a device it cannot open, whatever it is
        return f"FFmpeg cannot use cuda:{gpu} ({exc})"
    return None


def hwaccel(gpu: int) -> Any:
    """PyAV's decoding settings for ``gpu``: frames stay on the device; unsupported streams decode in software.

    FFmpeg takes the current CUDA context of the thread that opens the container: call
    ``make_torch_context_current(gpu)`` in that thread first.
    """
    from av.codec.hwaccel import HWAccel

    options = {"primary_ctx": "0", "current_ctx": "1"}  # PyAV would add primary_ctx=1, which FFmpeg cannot combine
    return HWAccel("cuda", device=str(gpu), allow_software_fallback=True, is_hw_owned=True, options=options)


def make_torch_context_current(gpu: int) -> int:
    """Make torch's context of ``gpu`` the calling thread's current one (created if need be); returns the previous device."""
    import torch

    previous = torch.cuda.current_device()
    torch.cuda.set_device(gpu)
    torch.cuda.synchronize()  # a runtime call that needs the context: it exists and is current here
    return previous


def nv12_planes(frame: av.VideoFrame) -> tuple[Any, Any]:
    """A frame's NV12 planes as tensors borrowed through DLPack: Y (H, W) and UV (H/2, W/2, 2), row pitch kept."""
    import torch

    # the capsules themselves: torch's from_dlpack(plane) would ask for a stream, which PyAV refuses
    return torch.from_dlpack(frame.planes[0].__dlpack__()), torch.from_dlpack(frame.planes[1].__dlpack__())


class FfmpegNvdecDecoder:
    """One connection's decoding on ``gpu`` through the container's hwaccel (opened by ``VideoSource``).

    Holds one of the GPU's decoder sessions (``SESSIONS``), taken before the container was opened.
    """

    def __init__(self, stream: av.video.stream.VideoStream, gpu: int, skip_frames: str = "none") -> None:
        import torch

        self.gpu = gpu
        self.device = torch.device("cuda", gpu)
        self._torch = torch
        self._closed = False
        self.software = False  # the last sampled picture was decoded by FFmpeg on the CPU (NVDEC refused the stream)
        self._video = stream
        context = stream.codec_context
        if skip_frames != "none":
            context.skip_frame = skip_frames.upper()
        context.thread_count = 1  # the hardware decodes; frame threads would only add latency
        self.refusal = unsupported_reason(stream)  # why FFmpeg may decode it in software (known once pictures come)

    @property
    def name(self) -> str:
        return "cpu" if self.software else f"nvdec:{self.gpu}"

    @staticmethod
    def decode(packet: av.Packet) -> list[av.VideoFrame]:
        return packet.decode()  # type: ignore[return-value]

    def end_pass(self) -> list[av.VideoFrame]:
        return drain(self._video)

    def to_image(self, frame: av.VideoFrame) -> Any:
        """RGB uint8 (H, W, 3): a CUDA tensor for an NVDEC picture, a host array for a software one."""
        self.software = frame.format.name != "cuda"
        if self.software:
            return frame.to_ndarray(format="rgb24")
        from detector.gpu_preprocessing import nv12_planes_to_rgb

        torch = self._torch
        height, width = frame.height // 2 * 2, frame.width // 2 * 2
        default = torch.cuda.default_stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(default):
            y, uv = nv12_planes(frame)
            rgb = nv12_planes_to_rgb(y[:height, :width], uv[: height // 2, : width // 2])
        default.synchronize()  # done with the picture before FFmpeg reuses it; the RGB copy is complete
        return rgb

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            SESSIONS.release(self.gpu)


def unsupported_reason(stream: av.video.stream.VideoStream) -> str:
    """The likely reason FFmpeg decoded this stream in software instead of on NVDEC."""
    context = stream.codec_context
    if context.name not in SUPPORTED_CODECS:
        return f"codec {context.name}: NVDEC did not take it"
    width, height = context.width, context.height
    if max(width, height) > MAX_SIDE:
        return f"{width}x{height} is larger than NVDEC's {MAX_SIDE} px"
    return f"NVDEC did not take this {context.name} stream ({context.profile or 'unknown'} profile, {context.pix_fmt})"


__all__ = ["FfmpegNvdecDecoder", "ffmpeg_nvdec_available", "hwaccel", "nv12_planes", "make_torch_context_current", "unsupported_reason"]
