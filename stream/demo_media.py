"""Demo input that needs nothing downloaded: a fake segment, then a real one, looped.

The demo must show the whole path within a minute: an alert starts on the fake part,
its snapshot is published, and it ends once the real part has filled the score window.
With ``../shared`` beside the checkout the segments are a real face-swap fake and a real
talking head from there; without it they are generated from scikit-image's astronaut
photo (a real face, public domain): the photo itself, and a blend forgery of it (the face
replaced by a colour- and scale-shifted copy of itself under a soft mask, the traces a
face swap leaves).  The combined clip is built once and cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

SHARED_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "clips"
SHARED_DEMO_FAKE = SHARED_CLIPS / "wav2lip-kim_lip_synced.mp4"  # Wav2Lip + GFPGAN lip-sync, 1080p: the restored face is pasted back
SHARED_DEMO_REAL = SHARED_CLIPS / "wav2lip-kim_7s_raw.mp4"  # the same clip as recorded
DEMO_SEGMENT_S = 20.0  # long enough for the running score's window to fill with one kind
DEMO_FPS = 25
DEMO_SIZE = (1280, 720)  # a 1080p source is cropped to its centre, not scaled: a scaled-down face loses the traces of the fake
GENERATED_SIZE = (640, 360)
DEMO_VERSION = 4  # part of the cache name: bump when the clip's recipe changes
# where the astronaut's face is in the 512x512 photo (MTCNN): box and the 5 landmarks
ASTRONAUT_FACE_BOX = (181, 62, 268, 172)


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


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25, codec: str = "libx264", crf: int = 23) -> Path:
    """Encode RGB frames into a real yuv420p file with PyAV: H.264 by default, H.265 with ``codec="libx265"``.

    ``crf`` is the encoder's quality (lower: closer to the input); a keyframe every ``fps`` frames.
    """
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps), "crf": str(crf)}
        if codec == "libx265":
            stream.options = {**stream.options, "x265-params": "log-level=error"}  # x265 logs every setting to stderr by default
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def astronaut_video_frames(seconds: float = 2.0, fps: int = 25, height: int = 360) -> list[np.ndarray]:
    """The frames of ``astronaut_video``: the astronaut drifting slowly left and right."""
    count = max(int(seconds * fps), 1)
    return [astronaut_frame(height, shift=int(20 * np.sin(i / 8))) for i in range(count)]


def astronaut_video(path: Path, seconds: float = 2.0, fps: int = 25, height: int = 360, codec: str = "libx264") -> Path:
    """A talking-head-like clip: the astronaut drifting slowly left and right."""
    return write_video(path, astronaut_video_frames(seconds, fps, height), fps=fps, codec=codec)


def blend_forgery(image: np.ndarray, box: tuple[int, int, int, int], strength: float = 1.0, seed: int = 0) -> np.ndarray:
    """``image`` with the face in ``box`` replaced by a slightly scaled, colour-shifted, resampled copy of itself under a soft mask."""
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = box
    height, width = image.shape[:2]
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    source = image.astype(np.float32)
    source = source * (1 + strength * np.array([0.10, -0.04, -0.08], np.float32)) + strength * 8  # warmer, brighter skin
    small = cv2.resize(source, (max(width // 2, 1), max(height // 2, 1)), interpolation=cv2.INTER_AREA)
    source = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)  # the swap's lost detail
    scale = 1 + 0.04 * strength
    shift = rng.uniform(-0.02, 0.02, 2) * (w, h)
    warp = np.array([[scale, 0, (1 - scale) * cx + shift[0]], [0, scale, (1 - scale) * cy + shift[1]]], np.float32)
    source = cv2.warpAffine(source, warp, (width, height), borderMode=cv2.BORDER_REFLECT)
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (int(cx), int(cy + 0.05 * h)), (int(0.45 * w), int(0.58 * h)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.04 * w, 1.0))[..., None]
    blended = source * mask + image.astype(np.float32) * (1 - mask)
    return np.clip(blended, 0, 255).astype(np.uint8)


def astronaut_forgery_frame(height: int = 360, shift: int = 0) -> np.ndarray:
    """The astronaut frame of ``astronaut_frame`` with its face blend-forged."""
    frame = astronaut_frame(height, shift=shift)
    side = max(int(height * 0.8), 8)
    x0 = max(min((frame.shape[1] - side) // 2 + shift, frame.shape[1] - side), 0)
    y0 = (height - side) // 2
    k = side / 512
    x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
    return blend_forgery(frame, (int(x0 + x1 * k), int(y0 + y1 * k), int(x0 + x2 * k), int(y0 + y2 * k)))


def _letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` cropped to its centre ``size`` (width, height) when it is larger both ways, else fitted into it on black."""
    width, height = size
    if image.shape[1] >= width and image.shape[0] >= height:
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        return np.ascontiguousarray(image[top : top + height, left : left + width])
    scale = min(width / image.shape[1], height / image.shape[0])
    new_w, new_h = max(int(image.shape[1] * scale) // 2 * 2, 2), max(int(image.shape[0] * scale) // 2 * 2, 2)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def _clip_frames(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``seconds`` of ``path`` at ``fps`` (frames repeated or skipped by pts; a shorter clip plays again from its start).

    The source is decoded once; a replay reuses its frames (a 1080p decode is the slow part on two cores).
    """
    wanted = int(seconds * fps)
    one_pass: list[np.ndarray] = []
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        next_t = 0.0
        for frame in container.decode(video):
            t = float(frame.time or 0.0)
            if t + 1e-6 < next_t:
                continue
            image = _letterbox(frame.to_ndarray(format="rgb24"), size)
            while next_t <= t + 1e-6 and len(one_pass) < wanted:
                one_pass.append(image)
                next_t += 1 / fps
            if len(one_pass) >= wanted:
                break
    if not one_pass:
        raise ValueError(f"{path}: no decodable video frame")
    return [one_pass[i % len(one_pass)] for i in range(wanted)]


def demo_segments() -> tuple[str, list[Path] | None]:
    """(description, [fake clip, real clip]) from ../shared when both are there, else (description, None) for generated media."""
    if SHARED_DEMO_FAKE.is_file() and SHARED_DEMO_REAL.is_file():
        return f"{SHARED_DEMO_FAKE.name} (lip-sync fake) then {SHARED_DEMO_REAL.name} (its original)", [SHARED_DEMO_FAKE, SHARED_DEMO_REAL]
    return "a blend-forged astronaut then the real astronaut (generated)", None


def build_demo_clip(path: Path, segment_s: float = DEMO_SEGMENT_S) -> Path:
    """Write the demo clip: ``segment_s`` of fake, then ``segment_s`` of real, at 25 fps."""
    _, clips = demo_segments()
    if clips is not None:
        frames = _clip_frames(clips[0], segment_s, DEMO_FPS, DEMO_SIZE) + _clip_frames(clips[1], segment_s, DEMO_FPS, DEMO_SIZE)
    else:
        count = int(segment_s * DEMO_FPS)
        fake = [astronaut_forgery_frame(GENERATED_SIZE[1], shift=int(20 * np.sin(i / 8))) for i in range(0, count, 5)]
        real = [astronaut_frame(GENERATED_SIZE[1], shift=int(20 * np.sin(i / 8))) for i in range(0, count, 5)]
        frames = [f for f in fake for _ in range(5)][:count] + [f for f in real for _ in range(5)][:count]  # 5 fps motion, 25 fps video
    return write_video(path, frames, fps=DEMO_FPS, crf=16)  # near-lossless: the fake's traces must survive the re-encode


def demo_clip(cache_dir: Path | None = None) -> Path:
    """The demo clip (fake, then real), built once into the cache."""
    description, clips = demo_segments()
    cache_dir = cache_dir or Path.home() / ".cache" / "deepfake-stream"
    tag = "shared" if clips is not None else "astronaut"
    path = cache_dir / f"demo-v{DEMO_VERSION}-{tag}.mp4"
    if not path.is_file():
        log.info("building the demo clip %s: %s", path, description)
        build_demo_clip(path)
    return path


if __name__ == "__main__":  # `python -m stream.demo_media`: build the demo clip ahead (make demo's set-up)
    print(demo_clip())
