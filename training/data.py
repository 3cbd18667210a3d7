"""The prepared face dataset as classifier inputs that look like inference inputs.

Inference crops the MTCNN box plus a third of its size per side, resizes the longer side to
``input_size`` (INTER_AREA down, INTER_CUBIC up) and zero-pads to a centred square
(``detector.preprocessing.prepare_crop``).  Training does exactly that with the stored box,
only with a margin drawn close to a third (so the model does not learn one exact framing);
validation uses the inference margin itself.  Landmarks follow the crop, for the self-blend
mask.  The split holds out whole identities, so validation faces are never training faces.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.preprocessing import crop_with_margin, isotropically_resize_image, put_to_center
from training.layout import INDEX_NAME, DatasetError

log = logging.getLogger(__name__)

INFERENCE_MARGIN = 1 / 3


@dataclass(frozen=True)
class FaceRecord:
    """One line of ``index.jsonl``: a context crop with the face box and landmarks in its coordinates."""

    file: str
    video: str
    identity: str
    frame: int
    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]


def read_index(dataset_dir: str | Path) -> list[FaceRecord]:
    """All records of a prepared dataset; a malformed line is an error naming it."""
    path = Path(dataset_dir) / INDEX_NAME
    if not path.is_file():
        raise DatasetError(f"{dataset_dir}: not a prepared dataset (no {INDEX_NAME}); run `deepfake-stream prepare`")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            box = tuple(float(v) for v in row["box"])
            landmarks = tuple((float(x), float(y)) for x, y in row["landmarks"])
            if len(box) != 4 or len(landmarks) != 5:
                raise ValueError("box needs 4 numbers and landmarks 5 points")
            records.append(FaceRecord(str(row["file"]), str(row["video"]), str(row["identity"]), int(row["frame"]), box, landmarks))  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{number}: bad record ({exc})") from None
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def split_by_identity(
    records: Sequence[FaceRecord], val_identities: Sequence[str] | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[FaceRecord], list[FaceRecord]]:
    """Train/validation records with no identity in both.

    ``val_identities`` may name identities or videos (file name or stem); without it a seeded
    ``val_fraction`` of the identities (at least one, never all) is held out.
    """
    identities = sorted({r.identity for r in records})
    if len(identities) < 2:
        raise DatasetError(f"an identity-level split needs at least 2 identities; the dataset has {identities}")
    if val_identities:
        held = set()
        for name in val_identities:
            matched = {r.identity for r in records if name in {r.identity, Path(r.video).name, Path(r.video).stem}}
            if not matched:
                raise DatasetError(f"--val-identities: {name!r} is neither an identity nor a video of the dataset")
            held |= matched
    else:
        if not 0 < val_fraction < 1:
            raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        shuffled = identities[:]
        random.Random(seed).shuffle(shuffled)
        count = min(max(1, math.ceil(val_fraction * len(identities))), len(identities) - 1)
        held = set(shuffled[:count])
    if held == set(identities):
        raise DatasetError("every identity is held out for validation; nothing is left to train on")
    train = [r for r in records if r.identity not in held]
    val = [r for r in records if r.identity in held]
    log.info("identity split: %d train identities (%d crops), %d validation identities (%d crops)", len(identities) - len(held), len(train), len(held), len(val))
    return train, val


def margin_crop(image: np.ndarray, box: Sequence[float], margins: Sequence[float] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop the box plus per-side margins (fractions of its size: left, top, right, bottom), clipped.

    ``None`` is inference's crop exactly (``crop_with_margin`` on the integer box).
    Returns the crop and its top-left corner in ``image``.
    """
    x1, y1, x2, y2 = (round(v) for v in box)
    if margins is None:
        p_w, p_h = (x2 - x1) // 3, (y2 - y1) // 3
        return crop_with_margin(image, (x1, y1, x2, y2)), (max(x1 - p_w, 0), max(y1 - p_h, 0))
    w, h = x2 - x1, y2 - y1
    height, width = image.shape[:2]
    left, top = max(round(x1 - margins[0] * w), 0), max(round(y1 - margins[1] * h), 0)
    right, bottom = min(round(x2 + margins[2] * w), width), min(round(y2 + margins[3] * h), height)
    return image[top:bottom, left:right], (left, top)


def to_model_input(crop: np.ndarray, landmarks: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inference's resize and padding; the landmarks (crop coordinates) follow."""
    resized = isotropically_resize_image(crop, input_size)
    padded = put_to_center(resized, input_size)
    sx, sy = resized.shape[1] / crop.shape[1], resized.shape[0] / crop.shape[0]
    offset = np.array([(input_size - resized.shape[1]) // 2, (input_size - resized.shape[0]) // 2], dtype=np.float64)
    return padded, landmarks * np.array([sx, sy]) + offset


class FaceCrops(Dataset):
    """Real face crops as uint8 CHW ``input_size`` squares plus their 5 landmarks.

    ``train=True`` draws the margin per item from ``(seed, epoch, index)``, so a run is
    repeatable whatever the number of loader workers.
    """

    def __init__(
        self,
        root: str | Path,
        records: Sequence[FaceRecord],
        input_size: int,
        train: bool,
        seed: int = 0,
        margin: tuple[float, float] = (INFERENCE_MARGIN - 0.07, INFERENCE_MARGIN + 0.07),
        side_jitter: float = 0.03,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.input_size = input_size
        self.train = train
        self.seed = seed
        self.margin = margin
        self.side_jitter = side_jitter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def margins_for(self, index: int) -> list[float] | None:
        if not self.train:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        base = rng.uniform(*self.margin)
        return [base + rng.uniform(-self.side_jitter, self.side_jitter) for _ in range(4)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        path = self.root / record.file
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{path}: cannot read image")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        crop, (left, top) = margin_crop(image, record.box, self.margins_for(index))
        if crop.size == 0:
            raise DatasetError(f"{path}: face box {record.box} lies outside the image")
        points = np.asarray(record.landmarks, dtype=np.float64) - np.array([left, top])
        face, points = to_model_input(crop, points, self.input_size)
        return torch.from_numpy(face).permute(2, 0, 1).contiguous(), torch.from_numpy(points.astype(np.float32))
