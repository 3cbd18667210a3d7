"""Self-blended images and the pair augmentation, on the CPU."""

from __future__ import annotations

import io
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from training.augment import augment_pairs, jpeg_like
from training.sbi import SBIConfig, blend, colour_transform, face_mask, self_blend

SIZE = 96
# MTCNN's 5 points of the astronaut's face at 96 px: eyes, nose, mouth corners
LANDMARKS = torch.tensor([[38.5, 19.2], [46.4, 19.5], [42.5, 24.2], [38.1, 26.3], [46.1, 26.6]])


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    image = cv2.resize(data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1)[None].repeat(6, 1, 1, 1).contiguous()


@pytest.fixture(scope="module")
def landmarks() -> torch.Tensor:
    return LANDMARKS[None].repeat(6, 1, 1)


def test_shapes_and_value_range(faces: torch.Tensor, landmarks: torch.Tensor) -> None:
    out = self_blend(faces, landmarks, torch.Generator().manual_seed(0))
    assert out.images.shape == out.sources.shape == out.targets.shape == (6, 3, SIZE, SIZE)
    assert out.masks.shape == (6, 1, SIZE, SIZE)
    for tensor in (out.images, out.masks, out.sources, out.targets):
        assert tensor.dtype == torch.float32 and float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert float(out.masks.amax(dim=(1, 2, 3)).min()) >= 0.2  # every image got a blend (r >= 0.25)


def test_zero_mask_gives_the_target_unchanged(faces: torch.Tensor, landmarks: torch.Tensor) -> None:
    out = self_blend(faces, landmarks, torch.Generator().manual_seed(1), replace(SBIConfig(), blend_ratios=(0.0,)))
    assert float(out.masks.abs().max()) == 0.0
    assert torch.equal(out.images, out.targets)
    source, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(blend(source, target, torch.zeros(2, 1, 8, 8)), target)


def test_blend_changes_pixels_only_inside_the_mask(faces: torch.Tensor, landmarks: torch.Tensor) -> None:
    out = self_blend(faces, landmarks, torch.Generator().manual_seed(2))
    changed = (out.images != out.targets).any(dim=1, keepdim=True)
    assert not bool((changed & (out.masks == 0)).any())
    assert bool((changed & (out.masks > 0.5)).any())
    assert float(out.masks[:, 0, 0, 0].max()) == 0.0  # the corner is no face


def test_mask_covers_the_face_between_its_landmarks(landmarks: torch.Tensor) -> None:
    cfg = replace(SBIConfig(), mask_blur=(0.0, 0.0), mask_elastic=0.0, mask_shift=0.0)
    masks = face_mask(landmarks, (SIZE, SIZE), torch.Generator().manual_seed(3), cfg)
    nose_x, nose_y = LANDMARKS[2].long().tolist()
    assert bool((masks[:, 0, nose_y, nose_x] == 1).all())
    assert bool((masks[:, 0, 2, :] == 0).all()) and bool((masks[:, 0, -2, :] == 0).all())
    area = masks.mean(dim=(1, 2, 3))
    assert bool((area > 0.01).all()) and bool((area < 0.2).all())


def test_same_seed_same_blends_other_seed_other_blends(faces: torch.Tensor, landmarks: torch.Tensor) -> None:
    a = self_blend(faces, landmarks, torch.Generator().manual_seed(7))
    b = self_blend(faces, landmarks, torch.Generator().manual_seed(7))
    c = self_blend(faces, landmarks, torch.Generator().manual_seed(8))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_colour_transform_is_identity_when_no_op_is_drawn(faces: torch.Tensor) -> None:
    x = faces.float() / 255
    same = colour_transform(x, torch.Generator().manual_seed(0), replace(SBIConfig(), colour_p=0.0))
    assert torch.allclose(same, x, atol=1e-5)
    changed = colour_transform(x, torch.Generator().manual_seed(0), replace(SBIConfig(), colour_p=1.0))
    assert float((changed - x).abs().mean()) > 0.01


def test_bad_shapes_are_refused(faces: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="landmarks"):
        self_blend(faces, torch.zeros(6, 4, 2), torch.Generator())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_jpeg_like_matches_a_real_jpeg_codec() -> None:
    image = data.astronaut()[:203, :157]  # sizes that are no multiple of 8 or 2
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    errors = []
    for quality in (30, 90):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        real_jpeg = np.asarray(Image.open(buffer))
        simulated = jpeg_like(x, torch.tensor([quality]))[0].permute(1, 2, 0).numpy()
        assert _psnr(simulated, real_jpeg) > 38
        errors.append(_psnr(simulated, image))
    assert errors[0] < errors[1] - 3  # lower quality, more loss


def test_a_pair_gets_the_same_augmentation(faces: torch.Tensor) -> None:
    x = faces.float() / 255
    real, fake = augment_pairs(x, x.clone(), torch.Generator().manual_seed(4))
    assert real.dtype == torch.uint8 and torch.equal(real, fake)
    flipped = (real.float() - faces.flip(-1).float()).abs().mean(dim=(1, 2, 3)) < (real.float() - faces.float()).abs().mean(dim=(1, 2, 3))
    assert 0 < int(flipped.sum()) < 6  # some flipped, some not (seeded)


def test_whole_image_degradation_is_the_same_for_both_images_of_a_pair() -> None:
    from training.augment import PairAugmentConfig, degrade_pairs

    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    cfg = PairAugmentConfig(resample_p=1.0, blur_p=1.0, tone_p=1.0)
    real, fake = degrade_pairs(images, images.clone(), gen, cfg)
    assert torch.equal(real, fake)  # identical inputs stay identical: nothing but the blend differs
    assert (real - images).abs().mean() > 0.01  # and they were degraded
    untouched, _ = degrade_pairs(images, images, torch.Generator().manual_seed(3), PairAugmentConfig(resample_p=0, blur_p=0, tone_p=0))
    assert torch.equal(untouched, images)


def test_temperature_softens_an_overconfident_model_without_changing_its_ranking() -> None:
    import numpy as np

    from training.train import fit_temperature

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200), np.ones(200)]
    logits = (labels * 2 - 1) * 2.0 + rng.normal(0, 2.0, 400)  # a decent ranking ...
    overconfident = logits * 6  # ... with logits six times too large
    t = fit_temperature(overconfident, labels)
    assert 3 < t < 12
    assert fit_temperature(logits * 0.5, labels) == 1.0  # never sharpens (T >= 1)
