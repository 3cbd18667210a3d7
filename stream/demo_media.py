"""Demo input that needs nothing downloaded: a shared clip when present, else a generated one.

The generated clip is built from scikit-image's astronaut photo (a real face,
public domain) so the detector has something real to find.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

SHARED_DEMO_CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "clips" / "wav2lip-kim_lip_synced.mp4"


def astronaut_frame(height: int = 480, width: int | None = None, face_fraction: float = 0.8, shift: int = 0) -> np.ndarray:
    """The astronaut photo scaled to ``face_fraction`` of the height, centred (shifted by ``shift``) on black."""
    width = width or height * 16 // 9
    side = max(int(height * face_fraction), 8)
    from skimage import data  # lazy: only demo and test media need the photo

    face = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y0 = (height - side) // 2
    x0 = max(min((width - side) // 2 + shift, width - side), 0)
    canvas[y0 : y0 + side, x0 : x0 + side] = face[:, : min(side, width - x0)]
    return canvas


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25, codec: str = "libx264") -> Path:
    """Encode RGB frames into a real H.264 (yuv420p) file with PyAV."""
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps)}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def astronaut_video(path: Path, seconds: float = 2.0, fps: int = 25, height: int = 360) -> Path:
    """A talking-head-like clip: the astronaut drifting slowly left and right."""
    count = max(int(seconds * fps), 1)
    frames = [astronaut_frame(height, shift=int(20 * np.sin(i / 8))) for i in range(count)]
    return write_video(path, frames, fps=fps)


def demo_clip(cache_dir: Path | None = None) -> Path:
    """The shared demo clip if this checkout has ``../shared``, else a generated one (cached)."""
    if SHARED_DEMO_CLIP.is_file():
        return SHARED_DEMO_CLIP
    cache_dir = cache_dir or Path.home() / ".cache" / "deepfake-stream"
    path = cache_dir / "demo-astronaut.mp4"
    if not path.is_file():
        log.info("generating demo clip %s", path)
        astronaut_video(path, seconds=8.0)
    return path
