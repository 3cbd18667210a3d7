"""Isotropic resize, centring and normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detector.preprocessing import IMAGENET_MEAN, IMAGENET_STD, isotropically_resize_image, normalize_batch, prepare_crop, put_to_center


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w", "expected"), [(101, 57, (380, 214)), (57, 101, (214, 380)), (761, 400, (380, 199)), (999, 1001, (379, 380)), (380, 200, (380, 200)), (3, 2, (380, 253))])
def test_longer_side_becomes_380(h: int, w: int, expected: tuple[int, int]) -> None:
    out = isotropically_resize_image(_image(h, w), 380)
    assert out.shape == (*expected, 3)


def test_interpolation_area_when_shrinking_cubic_when_enlarging() -> None:
    big, small = _image(760, 500), _image(190, 100)
    np.testing.assert_array_equal(isotropically_resize_image(big, 380), cv2.resize(big, (250, 380), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(isotropically_resize_image(small, 380), cv2.resize(small, (200, 380), interpolation=cv2.INTER_CUBIC))
    assert not np.array_equal(
        cv2.resize(small, (200, 380), interpolation=cv2.INTER_CUBIC), cv2.resize(small, (200, 380), interpolation=cv2.INTER_AREA)
    )


def test_exact_size_is_untouched() -> None:
    img = _image(380, 123)
    assert isotropically_resize_image(img, 380) is img


@pytest.mark.parametrize(("h", "w"), [(380, 199), (201, 380), (380, 380), (379, 380), (17, 33)])
def test_put_to_center_pads_symmetrically_with_zeros(h: int, w: int) -> None:
    img = _image(h, w) | 1  # no zero pixels inside
    out = put_to_center(img, 380)
    assert out.shape == (380, 380, 3)
    top, left = (380 - h) // 2, (380 - w) // 2
    np.testing.assert_array_equal(out[top : top + h, left : left + w], img)
    assert int(out.sum()) == int(img.astype(np.int64).sum())
    rows = np.nonzero(out.any(axis=(1, 2)))[0]
    cols = np.nonzero(out.any(axis=(0, 2)))[0]
    assert rows[0] == top and rows[-1] == top + h - 1
    assert cols[0] == left and cols[-1] == left + w - 1


@pytest.mark.parametrize(("h", "w"), [(1200, 900), (120, 95), (381, 379), (45, 400)])
def test_prepare_crop_larger_and_smaller_than_input(h: int, w: int) -> None:
    out = prepare_crop(_image(h, w), 380)
    assert out.shape == (380, 380, 3) and out.dtype == np.uint8
    assert out.any(axis=2)[190, 190]


def test_normalize_matches_the_reference_arithmetic() -> None:
    batch = np.stack([_image(380, 380, 1), _image(380, 380, 2)])
    x = normalize_batch(batch)
    assert x.shape == (2, 3, 380, 380) and x.dtype == torch.float32
    ref = torch.tensor(batch).float().permute(0, 3, 1, 2) / 255.0
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)
    cl = normalize_batch(batch, dtype=torch.float16, channels_last=True)
    assert cl.dtype == torch.float16 and cl.is_contiguous(memory_format=torch.channels_last)
