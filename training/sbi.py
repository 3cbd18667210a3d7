"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), batched in torch.

A training fake is a real face blended with a slightly altered copy of itself, so the
classifier learns the traces every face swap leaves (a blend boundary, a colour or
sharpness mismatch, a small misalignment) from real faces alone.  Written from the
paper's description; runs on whatever device the batch is on, because the CPU cannot
feed a GPU with per-image blends fast enough.

Per image: source = target = the real face; one of them (at random) gets a colour
transform (RGB shift, hue rotation, saturation, value, brightness, contrast) and a
frequency transform (down-then-up sampling blur, or sharpening, or neither); the source is
then rescaled (per axis) and translated a little.  The mask is an egg-shaped face region
built from MTCNN's 5 landmarks (extended up to the forehead and down to the chin by random
proportions), deformed by a random affine + smooth elastic field, and blurred with a
Gaussian of random width.  ``blended = source * r*M + target * (1 - r*M)`` with ``r`` drawn
from ``blend_ratios``.

Every random number comes from one CPU ``torch.Generator``, so a seed gives the same
parameters on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# MTCNN's landmark order
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)


@dataclass(frozen=True)
class SBIConfig:
    """Ranges of the random draws; (lo, hi) pairs are uniform, single numbers are +-."""

    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    # colour part of the source-target augmentation, each op applied with colour_p
    colour_p: float = 0.5
    rgb_shift: float = 20 / 255
    hue_degrees: float = 10.0
    saturation: tuple[float, float] = (0.7, 1.3)
    value: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.8, 1.2)
    # frequency part: blur with probability blur_p, else sharpen with sharpen_p, else nothing
    blur_p: float = 0.35
    sharpen_p: float = 0.35
    downscale: tuple[float, float] = (0.3, 0.7)
    sharpen: tuple[float, float] = (0.3, 1.0)
    # the source's geometry
    source_scale: tuple[float, float] = (0.95, 1.05)
    source_translate: float = 0.03  # fraction of the image side
    # mask, in units of the face's own landmark distances
    mask_half_width: tuple[float, float] = (0.85, 1.2)  # x max(interocular, 0.8 eye-mouth)
    mask_forehead: tuple[float, float] = (0.5, 1.3)  # above the eyes, x eye-mouth distance
    mask_chin: tuple[float, float] = (0.4, 0.9)  # below the mouth, x eye-mouth distance
    mask_scale: tuple[float, float] = (0.92, 1.08)
    mask_rotate_degrees: float = 8.0
    mask_shift: float = 0.04  # x mask width
    mask_elastic: float = 0.06  # peak displacement, x mask width
    mask_blur: tuple[float, float] = (0.0, 0.08)  # Gaussian sigma, x mask width


@dataclass
class SelfBlended:
    """The blended batch and what went into it (float in [0, 1], NCHW); masks already hold r*M."""

    images: torch.Tensor
    masks: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor


def _uniform(n: int, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _symmetric(n: int, limit: float, gen: torch.Generator) -> torch.Tensor:
    return (2 * torch.rand(n, generator=gen) - 1) * limit


def _coin(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def _applied(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """1.0 where an op is applied, 0.0 where its parameter falls back to the identity."""
    return _coin(n, p, gen).float()


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] NCHW -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


# ---- source-target augmentation -------------------------------------------------------------
def _hue_matrix(degrees: torch.Tensor) -> torch.Tensor:
    """Per-image 3x3 RGB matrices rotating hue around the grey axis (luma kept)."""
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    k = 1.0 / 3.0
    root = math.sqrt(k)
    a = cos + (1 - cos) * k
    b = k * (1 - cos) - root * sin
    c = k * (1 - cos) + root * sin
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([c, a, b], -1), torch.stack([b, c, a], -1)], -2)


def colour_transform(x: torch.Tensor, gen: torch.Generator, cfg: SBIConfig) -> torch.Tensor:
    """Random per-image colour change; ops not drawn are identities."""
    n, p = x.shape[0], cfg.colour_p
    hue = _symmetric(n, cfg.hue_degrees, gen) * _applied(n, p, gen)
    sat = 1 + (_uniform(n, cfg.saturation, gen) - 1) * _applied(n, p, gen)
    val = 1 + (_uniform(n, cfg.value, gen) - 1) * _applied(n, p, gen)
    shift = _symmetric(3 * n, cfg.rgb_shift, gen).view(n, 3) * _applied(n, p, gen)[:, None]
    bright = _symmetric(n, cfg.brightness, gen) * _applied(n, p, gen)
    contrast = 1 + (_uniform(n, cfg.contrast, gen) - 1) * _applied(n, p, gen)
    dev = x.device
    matrix = _hue_matrix(hue).to(dev)
    y = torch.einsum("nij,njhw->nihw", matrix, x)
    grey = y.mean(dim=1, keepdim=True)
    y = grey + (y - grey) * sat.to(dev).view(n, 1, 1, 1)  # saturation around each pixel's grey
    y = y * val.to(dev).view(n, 1, 1, 1) + shift.to(dev).view(n, 3, 1, 1) + bright.to(dev).view(n, 1, 1, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * contrast.to(dev).view(n, 1, 1, 1)
    return y.clamp_(0.0, 1.0)


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """(n, 2*radius+1) normalised 1-D Gaussians."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigmas.device)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigmas.clamp(min=1e-3)[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image; zero padding (right for masks)."""
    n, c, h, w = x.shape
    radius = int(min(max(math.ceil(3 * float(sigmas.max())), 1), max(h, w)))
    kernels = _gaussian_kernels(sigmas.to(x.device), radius).repeat_interleave(c, dim=0)  # (n*c, k)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(flat, kernels[:, None, :, None], padding=(radius, 0), groups=n * c)
    flat = F.conv2d(flat, kernels[:, None, None, :], padding=(0, radius), groups=n * c)
    return flat.reshape(n, c, h, w)


def frequency_transform(x: torch.Tensor, gen: torch.Generator, cfg: SBIConfig) -> torch.Tensor:
    """Down-then-up sampling blur, or unsharp-mask sharpening, or nothing, per image."""
    n, _, h, w = x.shape
    draw = torch.rand(n, generator=gen)
    scales = _uniform(n, cfg.downscale, gen)
    amounts = _uniform(n, cfg.sharpen, gen)
    blur = draw < cfg.blur_p
    sharpen = (~blur) & (draw < cfg.blur_p + cfg.sharpen_p)
    out = x.clone()
    for i in torch.nonzero(blur).flatten().tolist():
        size = (max(int(h * float(scales[i])), 1), max(int(w * float(scales[i])), 1))
        small = F.interpolate(x[i : i + 1], size=size, mode="bilinear", antialias=True, align_corners=False)
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if bool(sharpen.any()):
        soft = gaussian_blur(x, torch.ones(n, device=x.device))
        amount = (amounts * sharpen.float()).to(x.device).view(n, 1, 1, 1)
        sharpened = x + amount * (x - soft)
        out = torch.where(sharpen.to(x.device).view(n, 1, 1, 1), sharpened, out)
    return out.clamp_(0.0, 1.0)


def shift_and_scale(x: torch.Tensor, gen: torch.Generator, cfg: SBIConfig) -> torch.Tensor:
    """Resize about the centre (each axis its own factor) and translate, keeping the size."""
    n = x.shape[0]
    sx, sy = _uniform(n, cfg.source_scale, gen), _uniform(n, cfg.source_scale, gen)
    tx, ty = _symmetric(n, 2 * cfg.source_translate, gen), _symmetric(n, 2 * cfg.source_translate, gen)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / sx, 1 / sy  # sampling grid: output -> input coordinates
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def source_target(images: torch.Tensor, gen: torch.Generator, cfg: SBIConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target from the same faces: one of the two altered in colour/frequency, the source moved."""
    altered = frequency_transform(colour_transform(images, gen, cfg), gen, cfg)
    on_source = _coin(images.shape[0], 0.5, gen).to(images.device).view(-1, 1, 1, 1)
    source = torch.where(on_source, altered, images)
    target = torch.where(on_source, images, altered)
    return shift_and_scale(source, gen, cfg), target


# ---- mask -----------------------------------------------------------------------------------
def face_frames(landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per face: eye-line direction, centre and the two landmark distances the mask scales with."""
    lm = landmarks.float()
    eyes = (lm[:, LEFT_EYE] + lm[:, RIGHT_EYE]) / 2
    mouth = (lm[:, MOUTH_LEFT] + lm[:, MOUTH_RIGHT]) / 2
    eye_vec = lm[:, RIGHT_EYE] - lm[:, LEFT_EYE]
    interocular = eye_vec.norm(dim=1).clamp(min=1.0)
    u = eye_vec / interocular[:, None]
    v = torch.stack([-u[:, 1], u[:, 0]], dim=1)  # perpendicular, pointing down the face
    eye_mouth = ((mouth - eyes) * v).sum(dim=1).clamp(min=0.3 * interocular)
    centre_u = ((lm - eyes[:, None]) * u[:, None]).sum(dim=2).mean(dim=1)  # the nose pulls it on profiles
    return {"eyes": eyes, "u": u, "v": v, "interocular": interocular, "eye_mouth": eye_mouth, "centre_u": centre_u}


def face_mask(landmarks: torch.Tensor, size: tuple[int, int], gen: torch.Generator, cfg: SBIConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 1, H, W) soft face masks in [0, 1] from 5-point landmarks in pixel (x, y)."""
    n = landmarks.shape[0]
    h, w = size
    f = face_frames(landmarks.cpu())
    half_width = _uniform(n, cfg.mask_half_width, gen) * torch.maximum(f["interocular"], 0.8 * f["eye_mouth"])
    up = 0.5 * f["eye_mouth"] + _uniform(n, cfg.mask_forehead, gen) * f["eye_mouth"]
    down = 0.5 * f["eye_mouth"] + _uniform(n, cfg.mask_chin, gen) * f["eye_mouth"]
    centre = f["eyes"] + f["u"] * f["centre_u"][:, None] + f["v"] * (0.5 * f["eye_mouth"])[:, None]
    width = 2 * half_width
    # random affine of the mask: the inverse map applied to pixel positions
    scale = _uniform(n, cfg.mask_scale, gen)
    angle = torch.deg2rad(_symmetric(n, cfg.mask_rotate_degrees, gen))
    shift = _symmetric(2 * n, cfg.mask_shift, gen).view(n, 2) * width[:, None]
    # smooth elastic field: 4x4 random displacements, bicubic upsampled
    elastic = _symmetric(n * 2 * 16, 1.0, gen).view(n, 2, 4, 4) * (cfg.mask_elastic * width).view(n, 1, 1, 1)
    blur = _uniform(n, cfg.mask_blur, gen) * width

    dev = torch.device(device)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32) + 0.5, torch.arange(w, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    field = F.interpolate(elastic.to(dev), size=(h, w), mode="bicubic", align_corners=True)
    px = xs[None] + field[:, 0]
    py = ys[None] + field[:, 1]
    c = centre.to(dev)
    dx = px - c[:, 0, None, None] - shift[:, 0, None, None].to(dev)
    dy = py - c[:, 1, None, None] - shift[:, 1, None, None].to(dev)
    cos, sin = torch.cos(angle).to(dev)[:, None, None], torch.sin(angle).to(dev)[:, None, None]
    rx, ry = cos * dx + sin * dy, -sin * dx + cos * dy
    rx, ry = rx / scale.to(dev)[:, None, None], ry / scale.to(dev)[:, None, None]
    u, v = f["u"].to(dev), f["v"].to(dev)
    along = rx * u[:, 0, None, None] + ry * u[:, 1, None, None]
    across = rx * v[:, 0, None, None] + ry * v[:, 1, None, None]
    vertical = torch.where(across < 0, up.to(dev)[:, None, None], down.to(dev)[:, None, None])
    inside = (along / half_width.to(dev)[:, None, None]) ** 2 + (across / vertical) ** 2 <= 1.0
    return gaussian_blur(inside.float()[:, None], blur).clamp_(0.0, 1.0)


# ---- blend ----------------------------------------------------------------------------------
def blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``source * mask + target * (1 - mask)``: where the mask is 0 the target is untouched."""
    return source * mask + target * (1 - mask)


def blend_ratios(n: int, gen: torch.Generator, cfg: SBIConfig) -> torch.Tensor:
    choices = torch.tensor(cfg.blend_ratios, dtype=torch.float32)
    return choices[torch.randint(len(choices), (n,), generator=gen)]


def self_blend(images: torch.Tensor, landmarks: torch.Tensor, gen: torch.Generator, cfg: SBIConfig | None = None) -> SelfBlended:
    """Self-blended versions of a batch of real faces (NCHW uint8 or float [0, 1]) with their 5 landmarks."""
    cfg = cfg or SBIConfig()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an N x 3 x H x W batch, got {tuple(images.shape)}")
    if landmarks.shape != (images.shape[0], 5, 2):
        raise ValueError(f"expected landmarks of shape ({images.shape[0]}, 5, 2), got {tuple(landmarks.shape)}")
    x = to_unit_float(images)
    source, target = source_target(x, gen, cfg)
    mask = face_mask(landmarks, (x.shape[2], x.shape[3]), gen, cfg, x.device)
    mask = mask * blend_ratios(x.shape[0], gen, cfg).to(x.device).view(-1, 1, 1, 1)
    return SelfBlended(images=blend(source, target, mask), masks=mask, sources=source, targets=target)
