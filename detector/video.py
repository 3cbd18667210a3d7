"""Reading evenly spaced frames from a video file with PyAV (the offline scan's input)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".ts", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"}


def collect_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded (recursively) to their video files, sorted, de-duplicated."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS:
                    found[child] = None
        elif path.exists():
            found[path] = None
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(found)


class VideoReadError(Exception):
    """A video that cannot be opened or decoded; the message names file and reason."""


@dataclass
class SampledFrames:
    frames: list[np.ndarray]  # RGB uint8 HxWx3
    indices: list[int]
    frame_count: int


def evenly_spaced_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """The reference's indices: ``linspace(0, count - 1, n)`` truncated to int, deduplicated."""
    if frame_count <= 0:
        return np.zeros((0,), dtype=np.int64)
    return np.unique(np.linspace(0, frame_count - 1, num_frames, endpoint=True).astype(np.int64))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _count_frames(path: Path) -> int:
    import av  # here, not at the top: the engine imports this package and must not need a decoder (GPU hosts without PyAV)

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def read_evenly_spaced_frames(path: str | Path, num_frames: int = 32) -> SampledFrames:
    """Decode the video once, keeping ``num_frames`` evenly spaced frames as RGB arrays."""
    import av

    path = Path(path)
    if num_frames <= 0:
        raise ValueError("num_frames must be positive")
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file")
    try:
        frame_count = _count_frames(path)
    except IndexError:
        raise VideoReadError(f"{path}: no video stream") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"{path}: cannot open as video ({_first_line(exc)})") from None
    wanted = evenly_spaced_indices(frame_count, num_frames)
    if len(wanted) == 0:
        raise VideoReadError(f"{path}: video stream has no frames")
    targets = set(int(i) for i in wanted)
    last = int(wanted[-1])
    frames: list[np.ndarray] = []
    indices: list[int] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in targets:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    indices.append(index)
                if index >= last:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        if not frames:
            raise VideoReadError(f"{path}: decoding failed ({_first_line(exc)})") from None
    if not frames:
        raise VideoReadError(f"{path}: no frame could be decoded")
    return SampledFrames(frames=frames, indices=indices, frame_count=frame_count)
