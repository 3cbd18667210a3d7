"""Corrupt packets in the middle of a stream (bit flips in the H.264 data of the clip's ``mdat``).

Cases (1):

1. ``test_bit_flipped_bitstream_keeps_scoring_over_file_and_rtsp`` - a copy of the astronaut clip
   with bytes flipped in the middle of its ``mdat`` (container metadata intact, so only the
   bitstream is damaged) is played as a looping file stream *and* served over RTSP, beside a clean
   file stream: nothing crashes, no stream fails, every stream keeps scoring across several passes
   over the damaged part, and the engine reports no failed batch.
"""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest

from stream.app import App
from tests.fixtures.mqtt import MosquittoBroker, collect_messages
from tests.test_service import fast_stream, service_config, states

pytestmark = pytest.mark.timeout(180)


def find_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(payload offset, payload size) of the first top-level ISO-BMFF box of type ``kind``."""
    pos = 0
    while pos + 8 <= len(data):
        size, box = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = len(data) - pos
        if box == kind:
            return pos + header, size - header
        pos += size
    raise ValueError(f"no {kind!r} box")


def flip_bits_in_mdat(src: Path, dst: Path, start: float = 0.35, end: float = 0.65, step: int = 41) -> int:
    """Copy ``src`` with every ``step``-th byte of the middle of its mdat inverted; returns how many."""
    data = bytearray(src.read_bytes())
    offset, size = find_box(bytes(data), b"mdat")
    flipped = 0
    for i in range(offset + int(size * start), offset + int(size * end), step):
        data[i] ^= 0xFF
        flipped += 1
    dst.write_bytes(bytes(data))
    return flipped


def decode_all(path: Path) -> tuple[list[np.ndarray], int]:
    """Every decodable frame of ``path`` and the number of packets the decoder rejected."""
    frames: list[np.ndarray] = []
    rejected = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            try:
                frames += [frame.to_ndarray(format="rgb24") for frame in packet.decode()]
            except av.error.InvalidDataError:
                rejected += 1
    return frames, rejected


def face_scores(seen, stream: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [s for s in (m.json() for m in seen.on(f"deepfake/{stream}/score")) if s["score"] is not None]


async def test_bit_flipped_bitstream_keeps_scoring_over_file_and_rtsp(
    mqtt_broker: MosquittoBroker, rtsp_server, astronaut_clip: Path, fake_checkpoint: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    flipped = flip_bits_in_mdat(astronaut_clip, corrupt)
    offset, size = find_box(corrupt.read_bytes(), b"mdat")
    print(f"injected: {flipped} bytes inverted in the middle 30% of the {size}-byte mdat (at {offset}) of {corrupt.name}")
    clean_frames, _ = decode_all(astronaut_clip)
    damaged_frames, rejected = decode_all(corrupt)
    garbled = sum(1 for a, b in zip(clean_frames, damaged_frames, strict=False) if np.abs(a.astype(np.int16) - b).mean() > 10)
    print(f"injected damage, decoded offline: {rejected} packets rejected, {len(damaged_frames)}/{len(clean_frames)} frames, {garbled} garbled")
    assert rejected >= 1 and garbled >= 10  # the flips really hurt the bitstream
    server = rtsp_server(corrupt)
    cfg = service_config(
        mqtt_broker,
        fake_checkpoint,
        [
            fast_stream("corrupt-file", str(corrupt), loop=True, realtime=True),
            fast_stream("corrupt-rtsp", server.url),
            fast_stream("clean", str(astronaut_clip), loop=True, realtime=True),
        ],
    )
    names = ["corrupt-file", "corrupt-rtsp", "clean"]
    async with collect_messages(mqtt_broker.host, mqtt_broker.port, ["deepfake/#"]) as seen:
        app = App(cfg)
        service = await app.start()
        try:
            # the clip lasts 2 s: 7 s of scores per stream means 3+ passes over the damaged part
            await seen.wait_for(lambda _: all(len(face_scores(seen, n)) >= 7 for n in names), 90, "every stream scoring for 7 s")
            decoded = {n: service.streams[n].source.stats for n in names}  # type: ignore[attr-defined]
        finally:
            await app.stop()
    for name in names:
        stats = decoded[name]
        print(
            f"observed: {name}: states {states(seen, name)}, {len(face_scores(seen, name))} scores, "
            f"{stats.frames_decoded} frames decoded, last error {stats.last_error!r}"
        )
        assert "failed" not in states(seen, name), (name, states(seen, name))
        assert states(seen, name)[-1] == "stopped"
        assert face_scores(seen, name)[-1]["score"] > 0.99  # faces still found and scored
    assert decoded["corrupt-file"].frames_decoded >= 100  # decoding went on through several loops
    assert "reconnecting" not in states(seen, "corrupt-file")  # a local file is never 'reconnected'
    assert service.engine.stats.failed_batches == 0
