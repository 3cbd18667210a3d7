"""Face detection with facenet-pytorch MTCNN, the DFDC winner's way.

Frames are shrunk (or enlarged) before detection by a size rule, detected in
batches of equal-size frames, and boxes are mapped back to full resolution
where the crop (box plus a third of its size on each side) is taken.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from detector.cuda_graphs import PyramidGraphs
from detector.devices import resolve_device
from detector.fast_mtcnn import Cascade, CascadeFn, PyramidFn, detect_fast, pnet_pyramid, scripted_cascade
from detector.gpu_preprocessing import shrink_for_detection
from detector.preprocessing import crop_with_margin
from detector.scripting import wants_script

DEFAULT_THRESHOLDS = (0.7, 0.8, 0.8)
RescaleRule = Literal["size", "half"]


def detection_scale(width: int, height: int, rule: RescaleRule = "size") -> float:
    """Factor a frame is resized by before MTCNN.

    ``size``: by the longer side, 2x under 300 px, 1x up to 1000, 0.5x over
    1000, 0.33x over 1900.  ``half``: always 0.5, as the winner's Kaggle kernel.
    """
    if rule == "half":
        return 0.5
    longer = max(width, height)
    if longer < 300:
        return 2.0
    if longer <= 1000:
        return 1.0
    if longer <= 1900:
        return 0.5
    return 0.33


@dataclass
class FrameFaces:
    """Faces found in one frame: full-resolution integer boxes, MTCNN probabilities, crops.

    ``landmarks`` (n, 5, 2) float32 full-resolution (x, y) of the eyes, nose and mouth
    corners, only from a detector made with ``landmarks=True`` (training data needs them).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))
    crops: list[np.ndarray] = field(default_factory=list)
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.crops)


class FaceDetector:
    """MTCNN over batches of RGB frames; returns boxes, probabilities and margin crops."""

    def __init__(
        self,
        device: str | torch.device = "auto",
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        min_face_size: int = 20,
        rescale: RescaleRule = "size",
        max_batch: int = 64,
        gpu_resize: bool = False,
        fast_mtcnn: bool = False,
        landmarks: bool = False,
        pnet_graphs: bool = False,
        scripted: bool | None = None,
    ) -> None:
        """``scripted`` (fast_mtcnn only): the cascade after P-Net as one TorchScript call that leaves the GIL
        alone; None means on CUDA, where the decoders' and the event loop's threads compete for the GIL."""
        if landmarks and fast_mtcnn:
            raise ValueError("landmarks need facenet-pytorch's own detect; fast_mtcnn does not compute them")
        self.device = resolve_device(device)
        self.landmarks = landmarks
        self.rescale: RescaleRule = rescale
        self.max_batch = max_batch
        self.gpu_resize = gpu_resize and self.device.type == "cuda"
        self.fast_mtcnn = fast_mtcnn
        # CUDA + fast_mtcnn: P-Net's pyramid replayed from captured graphs (one call instead of ~350)
        self._pyramid: PyramidFn = PyramidGraphs() if pnet_graphs and fast_mtcnn and self.device.type == "cuda" else pnet_pyramid
        self.mtcnn = MTCNN(
            margin=0,
            thresholds=list(thresholds),
            min_face_size=min_face_size,
            device=self.device,
            keep_all=True,
        )
        self._cascade: CascadeFn | None = None
        if fast_mtcnn:  # built once, not per batch: scripted (one GIL release a call), or the same code eagerly
            self._cascade = scripted_cascade(self.mtcnn) if wants_script(scripted, self.device) else Cascade(self.mtcnn.rnet, self.mtcnn.onet, self.mtcnn.thresholds)

    def _target_size(self, frame: np.ndarray | torch.Tensor) -> tuple[tuple[int, int], float]:
        height, width = frame.shape[:2]
        scale = detection_scale(width, height, self.rescale)
        return (max(int(width * scale), 1), max(int(height * scale), 1)), scale

    def _shrink_cpu(self, frames: Sequence[np.ndarray], size: tuple[int, int], scale: float) -> np.ndarray:
        """PIL's default (bicubic) resize, exactly as the reference kernel."""
        if scale == 1.0:
            return np.stack(frames)
        return np.stack([np.asarray(Image.fromarray(f).resize(size=size)) for f in frames])

    def _shrink_gpu(self, frames: Sequence[np.ndarray], size: tuple[int, int], scale: float) -> torch.Tensor:
        """Antialiased bicubic resize on the GPU (PIL-like, not bit-exact): no 1080p resize on the CPU."""
        batch = torch.from_numpy(np.stack(frames)).to(self.device)
        if scale == 1.0:
            return batch
        return shrink_for_detection(batch, size)

    def _shrink_device_frames(self, frames: Sequence[torch.Tensor], size: tuple[int, int], scale: float) -> torch.Tensor:
        """Frames already on the GPU (NVDEC) are stacked and shrunk there: nothing crosses to the host."""
        batch = torch.stack([f.to(self.device) for f in frames])
        return batch if scale == 1.0 else shrink_for_detection(batch, size)

    def detect(self, frames: Sequence[np.ndarray | torch.Tensor]) -> list[FrameFaces]:
        """Detect faces in RGB uint8 HWC frames (any mix of sizes; NumPy arrays or CUDA tensors).

        Crops of a tensor frame are views of it, on its device.
        """
        results: list[FrameFaces] = [FrameFaces() for _ in frames]
        groups: dict[tuple[tuple[int, ...], tuple[int, int], float, bool], list[int]] = defaultdict(list)
        for i, frame in enumerate(frames):
            is_tensor = isinstance(frame, torch.Tensor)
            dtype_ok = frame.dtype == (torch.uint8 if is_tensor else np.uint8)
            if frame.ndim != 3 or frame.shape[2] != 3 or not dtype_ok:
                raise ValueError(f"frame {i}: expected uint8 HxWx3 RGB, got {frame.dtype} {tuple(frame.shape)}")
            size, scale = self._target_size(frame)
            if min(size) < self.mtcnn.min_face_size:  # below MTCNN's smallest pyramid level: no face fits
                continue
            groups[(tuple(frame.shape), size, scale, is_tensor)].append(i)
        for (_, size, scale, is_tensor), indices in groups.items():
            shrink = self._shrink_device_frames if is_tensor else self._shrink_gpu if self.gpu_resize else self._shrink_cpu
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                with torch.inference_mode():
                    batch = shrink([frames[i] for i in chunk], size, scale)
                    batch_points: Sequence[np.ndarray | None] = [None] * len(chunk)
                    if self.fast_mtcnn:
                        batch_boxes, batch_probs = detect_fast(self.mtcnn, batch, self._pyramid, self._cascade)
                    elif self.landmarks:
                        batch_boxes, batch_probs, batch_points = self.mtcnn.detect(batch, landmarks=True)
                    else:
                        batch_boxes, batch_probs = self.mtcnn.detect(batch, landmarks=False)
                for i, boxes, probs, points in zip(chunk, batch_boxes, batch_probs, batch_points, strict=True):
                    results[i] = self._faces_in(frames[i], boxes, probs, scale, points)
        return results

    def _faces_in(self, frame: np.ndarray | torch.Tensor, boxes: np.ndarray | None, probs: np.ndarray | None, scale: float, points: np.ndarray | None) -> FrameFaces:
        empty_landmarks = np.zeros((0, 5, 2), dtype=np.float32) if self.landmarks else None
        if boxes is None or probs is None:
            return FrameFaces(landmarks=empty_landmarks)
        kept_boxes, kept_probs, crops, kept_points = [], [], [], []
        for j, (box, prob) in enumerate(zip(boxes, probs, strict=True)):
            if box is None:
                continue
            full = [int(b / scale) for b in box]
            crop = crop_with_margin(frame, full)
            if crop.shape[0] == 0 or crop.shape[1] == 0:
                continue
            kept_boxes.append(full)
            kept_probs.append(float(prob))
            crops.append(crop)
            if points is not None:
                kept_points.append(np.asarray(points[j], dtype=np.float64) / scale)
        if not crops:
            return FrameFaces(landmarks=empty_landmarks)
        return FrameFaces(
            boxes=np.asarray(kept_boxes, dtype=np.int64),
            probs=np.asarray(kept_probs, dtype=np.float32),
            crops=crops,
            landmarks=np.asarray(kept_points, dtype=np.float32).reshape(-1, 5, 2) if self.landmarks else None,
        )
