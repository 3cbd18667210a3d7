"""Dropping the access units nothing refers to (the NVDEC source's ``skip_frames: nonref``), on real encoded video.

The proof that a dropped picture harmed nothing: FFmpeg decodes the thinned packet stream and
every picture it still gets is pixel-identical to the same picture of the full decode.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from stream.demo_media import astronaut_frame
from stream.sources.bitstream import ReferenceTracker, nal_units

ENCODERS = {"h264": ("libx264", "x264-params"), "hevc": ("libx265", "x265-params")}


def encode(path: Path, codec: str, params: str, frames: int = 30) -> Path:
    encoder, option = ENCODERS[codec]
    if encoder not in av.codecs_available:
        pytest.skip(f"PyAV has no {encoder}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=25)
        stream.width, stream.height = 320, 240
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "fast", option: params}
        for i in range(frames):
            image = astronaut_frame(240, 320, shift=int(20 * np.sin(i / 4)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def annexb_packets(path: Path, codec: str) -> list[av.Packet]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", video)
        packets = [p for packet in container.demux(video) for p in bsf.filter(packet)]
        return packets + list(bsf.filter(None))


def decode(packets: list[av.Packet], codec: str) -> dict[int, np.ndarray]:
    ctx = av.CodecContext.create(codec, "r")
    out: dict[int, np.ndarray] = {}
    for packet in [*packets, None]:
        for frame in ctx.decode(packet):
            out[frame.pts] = frame.to_ndarray(format="rgb24")
    return out


@pytest.mark.parametrize(
    ("codec", "params"),
    [("h264", "bframes=3:b-pyramid=none:keyint=15"), ("hevc", "bframes=3:b-pyramid=0:keyint=15:log-level=error")],
)
def test_dropped_pictures_harm_no_other(tmp_path: Path, codec: str, params: str) -> None:
    packets = annexb_packets(encode(tmp_path / f"b.{codec}.mp4", codec, params), codec)
    tracker = ReferenceTracker(codec)
    kept = [p for p in packets if not tracker.droppable(bytes(p))]
    assert 0 < len(packets) - len(kept) < len(packets)  # B-frames without a pyramid are not references
    full, thinned = decode(packets, codec), decode(kept, codec)
    assert len(thinned) == len(kept)
    for pts, image in thinned.items():
        assert np.array_equal(image, full[pts])


@pytest.mark.parametrize(("codec", "params"), [("h264", "bframes=0:keyint=15"), ("hevc", "bframes=0:keyint=15:log-level=error")])
def test_streams_without_b_frames_keep_everything(tmp_path: Path, codec: str, params: str) -> None:
    """Like most IP cameras: every P picture is a reference, nothing may go."""
    packets = annexb_packets(encode(tmp_path / f"p.{codec}.mp4", codec, params), codec)
    tracker = ReferenceTracker(codec)
    assert not any(tracker.droppable(bytes(p)) for p in packets)


def test_nal_units_and_bad_input() -> None:
    data = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x01\x01\x88"
    assert [data[i] for i in nal_units(data)] == [0x67, 0x01]
    assert ReferenceTracker("h264").droppable(b"\x00\x00\x01\x01\x88")  # nal_ref_idc 0 slice
    assert not ReferenceTracker("h264").droppable(b"\x00\x00\x01\x21\x88")  # nal_ref_idc 1
    assert not ReferenceTracker("h264").droppable(b"\x00\x00\x01\x67\x42")  # SPS only: kept
    assert not ReferenceTracker("h264").droppable(b"")
    with pytest.raises(ValueError, match="vp9"):
        ReferenceTracker("vp9")
