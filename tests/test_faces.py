"""facenet-pytorch MTCNN on our torch/numpy, the rescale rule and the margin crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detector.faces import FaceDetector, crop_with_margin, detection_scale
from tests.fixtures.media import astronaut_frame


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


def test_stack_is_current_not_facenet_pins() -> None:
    """facenet-pytorch 2.6.0 pins torch<2.3 and numpy<2; the lock overrides both."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 5)
    assert int(np.__version__.split(".")[0]) >= 2


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(299, 200, 2.0), (300, 300, 1.0), (1000, 600, 1.0), (1001, 600, 0.5), (1900, 1000, 0.5), (1920, 1080, 0.33), (3840, 2160, 0.33), (200, 640, 1.0), (480, 1280, 0.5)],
)
def test_rescale_rule_uses_longer_side(width: int, height: int, scale: float) -> None:
    assert detection_scale(width, height) == scale


def test_half_rule_is_the_kaggle_kernel() -> None:
    assert detection_scale(3840, 2160, "half") == 0.5
    assert detection_scale(200, 100, "half") == 0.5


@pytest.mark.parametrize("height", [480, 1080, 2160])
def test_mtcnn_finds_the_astronaut(detector: FaceDetector, height: int) -> None:
    frame = astronaut_frame(height)
    [faces] = detector.detect([frame])
    assert len(faces) == 1, f"expected one face at {height}p, got {faces.boxes}"
    xmin, ymin, xmax, ymax = faces.boxes[0]
    width = frame.shape[1]
    # the face sits in the middle of the pasted photo: box centre near frame centre-ish, within the photo
    side = int(height * 0.8)
    photo_x0, photo_y0 = (width - side) // 2, (height - side) // 2
    assert photo_x0 <= xmin < xmax <= photo_x0 + side
    assert photo_y0 <= ymin < ymax <= photo_y0 + side
    assert (xmax - xmin) > side * 0.1
    assert faces.probs[0] > 0.95
    # the crop carries a third of the box on each side (clipped to the frame)
    crop = faces.crops[0]
    bw, bh = xmax - xmin, ymax - ymin
    assert crop.shape[1] == min(xmax + bw // 3, width) - max(xmin - bw // 3, 0)
    assert crop.shape[0] == min(ymax + bh // 3, height) - max(ymin - bh // 3, 0)


def test_batch_of_mixed_sizes_matches_single_calls(detector: FaceDetector) -> None:
    frames = [astronaut_frame(480), astronaut_frame(720), astronaut_frame(480, shift=30)]
    batched = detector.detect(frames)
    single = [detector.detect([f])[0] for f in frames]
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_array_equal(b.boxes, s.boxes)
    assert batched[0].boxes[0, 0] != batched[2].boxes[0, 0]  # the shift moved the face


def test_boxes_map_back_to_full_resolution_like_the_reference(detector: FaceDetector) -> None:
    """At 1080p the frame is shrunk to 0.5x by PIL and boxes are int(b / 0.5), as the Kaggle kernel did."""
    frame = astronaut_frame(720, 1280)
    [faces] = detector.detect([frame])
    small = Image.fromarray(frame).resize((640, 360))
    boxes, _ = detector.mtcnn.detect(small, landmarks=False)
    assert faces.boxes.tolist() == [[int(b * 2) for b in boxes[0]]]


def test_no_face_in_noise(detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    [faces] = detector.detect([rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)])
    assert len(faces) == 0
    assert faces.boxes.shape == (0, 4)


def test_real_photos(detector: FaceDetector, images_dir) -> None:
    counts = {}
    for name in ("photo-paul_rudd.jpg", "photo-multiface.jpg", "photo-noise.jpg"):
        image = np.asarray(Image.open(images_dir / name).convert("RGB"))
        counts[name] = len(detector.detect([image])[0])
    assert counts["photo-paul_rudd.jpg"] >= 1
    assert counts["photo-multiface.jpg"] >= 2
    assert counts["photo-noise.jpg"] == 0


def test_crop_is_clipped_at_the_frame_edges() -> None:
    frame = np.arange(100 * 120 * 3, dtype=np.uint8).reshape(100, 120, 3)
    crop = crop_with_margin(frame, (-5, 10, 30, 40))
    # width 35 -> margin 11; height 30 -> margin 10
    assert crop.shape == (40 + 10 - 0, 30 + 11, 3)
    np.testing.assert_array_equal(crop, frame[0:50, 0:41])


def test_rejects_non_rgb_frames(detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        detector.detect([np.zeros((10, 10), dtype=np.uint8)])
