"""``deepfake-stream scan`` over hostile files: every one gets 0.5 and a warning naming it and the reason.

Cases (1 scan over 13 files):

1. ``test_scan_survives_hostile_files`` - zero-byte, truncated (moov lost), wrong extension (an ELF
   binary as ``.avi``, a zip archive as ``.mov``, random bytes as ``.mkv``, a PDF header as ``.webm``,
   plain text as ``.mp4``), huge resolution (7680x4320, 3 frames, no face), 2x2 pixels, audio only
   (AAC in ``.mp4``, MP2 in MPEG-PS ``.mpg``) -> 0.5 each with a warning naming the file and the reason;
   a JPEG named ``.mp4`` (FFmpeg sniffs the content: a one-frame video) and the good clip are scored.
   The scan exits 0, its CSV lists every file, and the 8K file's peak memory stays bounded.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.cli import main
from tests.fixtures.media import TEST_ENCODER, astronaut_frame, write_video

pytestmark = pytest.mark.timeout(240)

B0 = ["--encoder", TEST_ENCODER, "--device", "cpu", "--no-progress"]


def write_audio_only(path: Path, codec: str, fmt: str | None = None) -> Path:
    """A second of silence as the only stream of ``path`` (no video stream at all)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=44100, layout="stereo")
        frame_size = 1152 if codec == "mp2" else 1024
        sample_format = "s16p" if codec == "mp2" else "fltp"
        dtype = np.int16 if codec == "mp2" else np.float32
        for i in range(44100 // frame_size):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, frame_size), dtype=dtype), format=sample_format, layout="stereo")
            frame.sample_rate, frame.pts = 44100, i * frame_size
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM) so a later reading measures only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_scan_survives_hostile_files(astronaut_clip: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "hostile"
    d.mkdir()
    good = astronaut_clip.read_bytes()
    neutral: dict[str, str] = {}  # file -> the reason its warning must give

    (d / "zero.mp4").write_bytes(b"")
    neutral["zero.mp4"] = "empty file"
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])  # the moov atom is at the end: lost
    neutral["truncated.mp4"] = "cannot open as video"
    shutil.copyfile("/bin/true", d / "program.avi")  # an ELF executable
    neutral["program.avi"] = "cannot open as video"
    with zipfile.ZipFile(d / "archive.mov", "w") as archive:
        archive.writestr("inner.mp4", good)  # a real video, but zipped
    neutral["archive.mov"] = "cannot open as video"
    (d / "noise.mkv").write_bytes(np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    neutral["noise.mkv"] = "cannot open as video"
    (d / "document.webm").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 50)
    neutral["document.webm"] = "cannot open as video"
    (d / "notes.mp4").write_text("not a video at all\n" * 100)
    neutral["notes.mp4"] = "cannot open as video"
    started = time.monotonic()
    write_video(d / "huge-8k.mp4", [np.full((4320, 7680, 3), 90, np.uint8)] * 3)  # ultrafast; 3 frames of 8K
    neutral["huge-8k.mp4"] = "no face found"
    write_video(d / "tiny-2x2.mp4", [np.full((2, 2, 3), 128, np.uint8)] * 5)
    neutral["tiny-2x2.mp4"] = "no face found"
    write_audio_only(d / "audio-aac.mp4", "aac")
    neutral["audio-aac.mp4"] = "no video stream"
    write_audio_only(d / "audio-mp2.mpg", "mp2", "mpeg")
    neutral["audio-mp2.mpg"] = "no video stream"
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut_frame(360), cv2.COLOR_RGB2BGR))[1].tobytes()
    (d / "photo.mp4").write_bytes(jpeg)  # a still photo with a video extension: decodable, one frame
    shutil.copyfile(astronaut_clip, d / "good.mp4")
    print(f"injected: {len(neutral)} hostile files + a JPEG named .mp4 + the good clip (written in {time.monotonic() - started:.1f} s)")

    out = tmp_path / "predictions.csv"
    measured = peak_rss_reset()
    base = peak_rss_bytes()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        code = main(["scan", str(d), "--out", str(out), "--weights", str(checkpoint), "--frames", "4", *B0])
    took = time.monotonic() - started
    peak = peak_rss_bytes() - base
    assert code == 0
    with out.open(newline="") as handle:
        rows = {r["filename"]: float(r["label"]) for r in csv.DictReader(handle)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "stream.scan"]
    print(f"observed: exit {code} in {took:.1f} s, peak RSS +{peak / 2**30:.2f} GiB; {rows}")
    for line in warnings:
        print(f"observed warning: {line}")
    assert set(rows) == set(neutral) | {"photo.mp4", "good.mp4"}
    for name, reason in neutral.items():
        assert rows[name] == 0.5, name
        mine = [w for w in warnings if w.startswith(str(d / name))]
        assert len(mine) == 1 and reason in mine[0], (name, reason, mine)
    assert rows["good.mp4"] != 0.5 and rows["photo.mp4"] != 0.5  # faces found and scored
    assert not any("good.mp4" in w or "photo.mp4" in w for w in warnings)
    if measured:
        assert peak < 4 * 2**30, f"8K scan peaked at {peak / 2**30:.1f} GiB above the baseline"
