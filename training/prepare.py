"""Real videos -> a compact face dataset (JPEG context crops + ``index.jsonl``).

Faces come from our own ``FaceDetector`` (MTCNN, the inference thresholds and size rule) so
training boxes are the boxes inference will see.  Each kept face is saved as a context crop
(box plus ``context`` of its size per side) small enough that the whole dataset can travel
to a GPU machine in one go; the face box and the 5 landmarks are stored in crop
coordinates.  A video that cannot be read is skipped with a warning naming it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detector.faces import DEFAULT_THRESHOLDS, FaceDetector, FrameFaces
from detector.video import VideoReadError, collect_videos, read_evenly_spaced_frames
from training.layout import INDEX_NAME, SUMMARY_NAME, DatasetError, is_dataset

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class PrepareConfig:
    frames_per_video: int = 32
    max_mb: float = 60.0  # MiB of JPEGs: a GPU run carries at most 64 MiB
    context: float = 0.6  # crop = box + this fraction of its size on each side (inference needs 1/3)
    max_side: int = 384  # longest side of a saved crop
    jpeg_quality: int = 90
    all_faces_min_size: int | None = None  # keep every face whose box is at least this many px, not only the best
    device: str = "auto"


@dataclass
class PrepareSummary:
    out_dir: Path
    videos: int = 0
    crops: int = 0
    identities: int = 0
    megabytes: float = 0.0
    frames_per_video: int = 0  # after any reduction for the size budget
    skipped: dict[str, str] = field(default_factory=dict)  # video -> reason

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """``file`` (or ``filename``) -> row; ``identity`` and ``label`` columns are optional."""
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read manifest ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: manifest has no rows")
    key = "file" if "file" in rows[0] else "filename" if "filename" in rows[0] else None
    if key is None:
        raise DatasetError(f"{path}: manifest needs a 'file' (or 'filename') column")
    return {Path(row[key]).name: row for row in rows}


def identity_of(video: Path, manifest: dict[str, dict[str, str]]) -> str:
    """The manifest's identity for the video, else its file stem (one identity per video)."""
    return (manifest.get(video.name, {}).get("identity") or "").strip() or video.stem


def _is_labelled_fake(video: Path, manifest: dict[str, dict[str, str]]) -> bool:
    label = (manifest.get(video.name, {}).get("label") or "").strip().upper()
    return label in {"FAKE", "1"}


def choose_faces(faces: FrameFaces, all_faces_min_size: int | None) -> list[int]:
    """Indices of the faces to keep: the most confident (then largest), or all big enough ones."""
    if len(faces) == 0:
        return []
    sizes = np.minimum(faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1])
    if all_faces_min_size is not None:
        return [i for i in range(len(faces)) if sizes[i] >= all_faces_min_size]
    return [max(range(len(faces)), key=lambda i: (float(faces.probs[i]), int(sizes[i])))]


def context_crop(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, context: float, max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], float]:
    """Crop box + ``context`` per side (clipped), shrink to ``max_side``; box/landmarks in crop coordinates."""
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_w, pad_h = round((x2 - x1) * context), round((y2 - y1) * context)
    height, width = frame.shape[:2]
    left, top = max(x1 - pad_w, 0), max(y1 - pad_h, 0)
    right, bottom = min(x2 + pad_w, width), min(y2 + pad_h, height)
    crop = frame[top:bottom, left:right]
    scale = min(1.0, max_side / max(crop.shape[:2]))
    factors = np.ones(2)
    if scale < 1.0:
        size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
        factors = np.array([size[0] / crop.shape[1], size[1] / crop.shape[0]])  # exact per axis after rounding
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    origin = np.array([left, top], dtype=np.float64)
    crop_box = ((np.asarray(box, dtype=np.float64).reshape(2, 2) - origin) * factors).reshape(4)
    crop_landmarks = (np.asarray(landmarks, dtype=np.float64) - origin) * factors
    return crop, crop_box, crop_landmarks, (left, top), scale


def _video_dir_name(video: Path) -> str:
    digest = hashlib.sha1(str(video.resolve()).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in video.stem)[:60]
    return f"{safe}-{digest}"


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> int:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DatasetError(f"{path}: JPEG encoding failed")
    path.write_bytes(data.tobytes())
    return len(data)


def faces_of_video(video: Path, identity: str, detector: FaceDetector, out_dir: Path, cfg: PrepareConfig) -> list[dict[str, object]]:
    """Detect, crop and save the faces of one video; returns its index rows (with their byte sizes)."""
    sampled = read_evenly_spaced_frames(video, cfg.frames_per_video)
    folder = out_dir / "faces" / _video_dir_name(video)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for frame, index, faces in zip(sampled.frames, sampled.indices, detector.detect(sampled.frames), strict=True):
        assert faces.landmarks is not None  # the detector was made with landmarks=True
        for k in choose_faces(faces, cfg.all_faces_min_size):
            crop, box, points, origin, scale = context_crop(frame, faces.boxes[k], faces.landmarks[k], cfg.context, cfg.max_side)
            name = folder / f"f{index:06d}-{k}.jpg"
            size = _write_jpeg(name, crop, cfg.jpeg_quality)
            rows.append({
                "file": name.relative_to(out_dir).as_posix(),
                "video": str(video),
                "identity": identity,
                "frame": int(index),
                "box": [round(float(v), 2) for v in box],
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in points],
                "prob": round(float(faces.probs[k]), 5),
                "crop_size": [int(crop.shape[1]), int(crop.shape[0])],
                "crop_origin": [int(origin[0]), int(origin[1])],
                "crop_scale": round(scale, 6),
                "source_size": [int(frame.shape[1]), int(frame.shape[0])],
                "bytes": size,
            })
    return rows


def fit_budget(rows: list[dict[str, object]], out_dir: Path, max_bytes: float) -> list[dict[str, object]]:
    """Drop frames evenly within every video (deleting their JPEGs) until the crops fit ``max_bytes``."""
    total = sum(int(r["bytes"]) for r in rows)
    while total > max_bytes:
        ratio = 0.97 * max_bytes / total
        by_video: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            by_video.setdefault(str(row["video"]), []).append(row)
        kept: list[dict[str, object]] = []
        for video_rows in by_video.values():
            frames = sorted({int(r["frame"]) for r in video_rows})
            positions = np.unique(np.linspace(0, len(frames) - 1, max(1, int(len(frames) * ratio))).round().astype(int))
            keep = {frames[i] for i in positions}
            kept.extend(r for r in video_rows if int(r["frame"]) in keep)
        if len(kept) == len(rows):
            raise DatasetError(f"{out_dir}: one frame per video is still over the {max_bytes / MIB:.1f} MiB budget; raise --max-mb or give fewer videos")
        kept_files = {str(r["file"]) for r in kept}
        for row in rows:
            if str(row["file"]) not in kept_files:
                (out_dir / str(row["file"])).unlink(missing_ok=True)
        rows, total = kept, sum(int(r["bytes"]) for r in kept)
    return rows


def frames_per_video(rows: Sequence[dict[str, object]]) -> int:
    """The most frames any video kept."""
    frames: dict[str, set[int]] = {}
    for row in rows:
        frames.setdefault(str(row["video"]), set()).add(int(row["frame"]))
    return max((len(f) for f in frames.values()), default=0)


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    manifest: str | Path | None = None,
    config: PrepareConfig | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Build the face dataset of the REAL videos in ``inputs`` (files or folders) under ``out_dir``.

    Videos the manifest labels FAKE are left out (a labels file can serve as manifest).
    """
    cfg = config or PrepareConfig()
    if cfg.frames_per_video < 1 or cfg.max_mb <= 0:
        raise DatasetError(f"--frames-per-video must be at least 1 and --max-mb positive (got {cfg.frames_per_video}, {cfg.max_mb})")
    out = Path(out_dir)
    if (out / INDEX_NAME).exists():
        raise DatasetError(f"{out}: already holds a dataset ({INDEX_NAME}); choose another --out or remove it")
    try:
        videos = collect_videos(inputs)
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from None
    rows_by_manifest = read_manifest(Path(manifest)) if manifest is not None else {}
    fakes = {v for v in videos if _is_labelled_fake(v, rows_by_manifest)}
    if fakes:
        log.warning("leaving out %d videos the manifest labels FAKE (training needs real faces only)", len(fakes))
    videos = [v for v in videos if v not in fakes]
    if not videos:
        raise DatasetError("no real video files found in " + " ".join(str(i) for i in inputs))
    out.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector(device=cfg.device, thresholds=DEFAULT_THRESHOLDS, landmarks=True)
    summary = PrepareSummary(out_dir=out)
    rows: list[dict[str, object]] = []
    for video in tqdm(videos, desc="prepare", unit="video", disable=not progress):
        try:
            video_rows = faces_of_video(video, identity_of(video, rows_by_manifest), detector, out, cfg)
        except VideoReadError as exc:
            log.warning("skipping %s", exc)
            summary.skipped[str(video)] = str(exc)
            continue
        if not video_rows:
            log.warning("skipping %s: no face found", video)
            summary.skipped[str(video)] = "no face found"
            continue
        rows.extend(video_rows)
    if not rows:
        shutil.rmtree(out / "faces", ignore_errors=True)
        raise DatasetError(f"no face found in any of the {len(videos)} videos")
    budget = cfg.max_mb * MIB
    before = frames_per_video(rows)
    rows = fit_budget(rows, out, budget)
    summary.frames_per_video = frames_per_video(rows)
    if summary.frames_per_video < before:
        log.warning("crops were over --max-mb %.0f: frames per video reduced evenly from %d to at most %d", cfg.max_mb, before, summary.frames_per_video)
    with (out / INDEX_NAME).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: v for k, v in row.items() if k != "bytes"}) + "\n")
    summary.videos = len({r["video"] for r in rows})
    summary.crops = len(rows)
    summary.identities = len({r["identity"] for r in rows})
    summary.megabytes = round(sum(int(r["bytes"]) for r in rows) / MIB, 2)
    (out / SUMMARY_NAME).write_text(json.dumps({**summary.to_json(), "config": asdict(cfg)}, indent=2) + "\n")
    log.info("dataset %s: %d crops of %d videos, %d identities, %.1f MiB", out, summary.crops, summary.videos, summary.identities, summary.megabytes)
    return summary


def dataset_for(
    inputs: Sequence[str | Path],
    manifest: str | Path | None = None,
    config: PrepareConfig | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
) -> Path:
    """A prepared dataset as given, or one prepared from raw videos into a cache keyed by inputs and options."""
    if len(inputs) == 1 and is_dataset(inputs[0]):
        return Path(inputs[0])
    cfg = config or PrepareConfig()
    try:
        videos = collect_videos(inputs)
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from None
    key = hashlib.sha1()
    for video in videos:
        stat = video.stat()
        key.update(f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    if manifest is not None:
        if not Path(manifest).is_file():
            raise DatasetError(f"{manifest}: manifest not found")
        key.update(Path(manifest).read_bytes())
    key.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    root = cache_root or Path.home() / ".cache" / "deepfake-stream" / "faces"
    target = root / key.hexdigest()[:16]
    if is_dataset(target):
        log.info("reusing the face dataset prepared earlier in %s", target)
        return target
    shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier run left no index: start again
    log.info("preparing a face dataset from %d videos into %s", len(videos), target)
    prepare(inputs, target, manifest, cfg, progress)
    return target
