"""Face crop -> classifier input, exactly as the DFDC winner prepared it.

The resize and padding run on the CPU with OpenCV; the crops travel to the
device as uint8 (4x fewer bytes than float) and are normalised there.  For
frames decoded on the GPU, ``detector/gpu_preprocessing.py`` replays the same
arithmetic there (INTER_AREA exactly, INTER_CUBIC within one level).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def margin_bounds(box: Sequence[int], height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of ``box`` (xmin, ymin, xmax, ymax) plus a third of its size per side, clipped.

    One home for the integer arithmetic, shared by the CPU crop and the GPU path.
    """
    xmin, ymin, xmax, ymax = box
    p_w = (xmax - xmin) // 3
    p_h = (ymax - ymin) // 3
    top, left = max(ymin - p_h, 0), max(xmin - p_w, 0)
    bottom, right = min(max(ymax + p_h, 0), height), min(max(xmax + p_w, 0), width)
    return top, bottom, left, right


def crop_with_margin(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Crop ``box`` (xmin, ymin, xmax, ymax) plus a third of its size per side, clipped."""
    top, bottom, left, right = margin_bounds(box, *frame.shape[:2])
    return frame[top:bottom, left:right]


def isotropic_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_height, new_width) that ``isotropically_resize_image`` gives: unchanged when the longer side is ``size``.

    The longer side becomes ``size``; the other is ``int()``-truncated, at least 1, as in the reference.
    """
    if max(width, height) == size:
        return height, width
    if width > height:
        scale = size / width
        new_h, new_w = height * scale, size
    else:
        scale = size / height
        new_w, new_h = width * scale, size
    return max(int(new_h), 1), max(int(new_w), 1)


def isotropically_resize_image(
    img: np.ndarray,
    size: int,
    interpolation_down: int = cv2.INTER_AREA,
    interpolation_up: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Scale so the longer side is ``size``, keeping the aspect ratio.

    Shrinking uses INTER_AREA, enlarging INTER_CUBIC; the other side is
    truncated to an int, as in the reference.
    """
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize an empty image of shape {img.shape}")
    if max(w, h) == size:
        return img
    new_h, new_w = isotropic_shape(h, w, size)
    interpolation = interpolation_up if size > max(w, h) else interpolation_down  # the reference's ``scale > 1``
    return cv2.resize(img, (new_w, new_h), interpolation=interpolation)


def put_to_center(img: np.ndarray, input_size: int) -> np.ndarray:
    """Paste ``img`` centred on a zero ``input_size`` square (cropping overflow)."""
    img = img[:input_size, :input_size]
    canvas = np.zeros((input_size, input_size, 3), dtype=np.uint8)
    start_w = (input_size - img.shape[1]) // 2
    start_h = (input_size - img.shape[0]) // 2
    canvas[start_h : start_h + img.shape[0], start_w : start_w + img.shape[1], :] = img
    return canvas


def prepare_crop(crop: np.ndarray, input_size: int) -> np.ndarray:
    """One RGB face crop -> padded ``input_size`` square, uint8 HWC."""
    return put_to_center(isotropically_resize_image(crop, input_size), input_size)


def stack_crops(crops: Sequence[np.ndarray], input_size: int) -> np.ndarray:
    """Prepare many crops into one uint8 NHWC batch."""
    batch = np.zeros((len(crops), input_size, input_size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        batch[i] = prepare_crop(crop, input_size)
    return batch


def normalize_batch(
    batch: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on ``device``.

    Same arithmetic as the reference (``x / 255`` then ImageNet mean/std in
    float32), done where the model runs, cast to the model dtype last.
    """
    device = torch.device(device)
    tensor = torch.as_tensor(batch).to(device)
    x = tensor.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = x.sub_(mean).div_(std).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_host(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A frame or crop as a host array, for the rare uses that need pixels there (alert snapshots)."""
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return image
