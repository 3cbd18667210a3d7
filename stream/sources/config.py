"""Settings of one camera or broadcast feed (a ``streams:`` entry of ``config.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from detector.config import PositiveFloat, StrictModel

STREAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# <prefix>/instance/<instance>/available is each replica's availability: no stream may own that topic level
RESERVED_STREAM_NAMES = frozenset({"instance"})
StreamName = Annotated[str, Field(pattern=STREAM_NAME_PATTERN)]
Decoder = Literal["auto", "nvdec", "thread", "process"]


class StreamConfig(StrictModel):
    """One camera or broadcast feed."""

    name: StreamName = Field(description="MQTT topic segment and label: letters, digits, . _ - (at most 64)")
    url: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="any FFmpeg URL (rtsp://, http(s):// and HLS, a file path) or `demo:` for the bundled demo clip"
    )
    sample_fps: PositiveFloat = Field(2.0, description="frames analysed per second, by presentation time")
    enabled: bool = Field(True, description="false keeps the entry but does not watch it")
    loop: bool = Field(False, description="files only: start again at the end")
    realtime: bool = Field(False, description="files only: pace decoding at the video's own rate")
    open_timeout_s: PositiveFloat = Field(10.0, description="give up opening the URL after this long (then retry)")
    read_timeout_s: PositiveFloat = Field(10.0, description="socket read timeout of a network feed")
    watchdog_s: PositiveFloat = Field(10.0, description="reconnect when no frame came for this long")
    skip_frames: Literal["none", "nonref", "nonkey"] = Field(
        "none", description="nonref: do not decode frames no other frame refers to; nonkey: decode keyframes only"
    )
    decoder: Decoder = Field(
        "auto",
        description="auto: nvdec when the engine runs on CUDA and PyNvVideoCodec works, else thread; nvdec: the GPU's hardware decoder "
        "(H.264/H.265, frames stay on the GPU; others fall back to thread, logged); thread: FFmpeg in this process; process: FFmpeg in a child process",
    )
    reconnect_min_s: PositiveFloat = Field(1.0, description="first reconnect delay; it doubles after each failed attempt")
    reconnect_max_s: PositiveFloat = Field(30.0, description="longest reconnect delay")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_STREAM_NAMES:
            raise ValueError(f"{name!r} is reserved: <prefix>/{name}/<instance>/available carries each replica's availability")
        return name

    @model_validator(mode="after")
    def _backoff_order(self) -> StreamConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


@dataclass
class NvdecSettings:
    """How NVDEC streams are hosted, for every stream of the process (set once from ``engine:`` by the
    composition root): one session cap per GPU whether streams decode in worker processes or in threads."""

    sessions_per_gpu: int = 512
    workers_per_gpu: int | None = None  # None: default_workers(backend); 0: in the analyzer's own threads
    backend: Literal["pynvvideocodec", "ffmpeg"] = "ffmpeg"  # who feeds NVDEC (ffmpeg: PyAV's hwaccel)


NVDEC = NvdecSettings()
