"""Augmentation shared by a real face and its self-blended twin, on the training device.

Both images of a pair get the same flip, the same global degradation (resampled through a
lower resolution, blurred, brightness/contrast) and the same JPEG quality, so nothing but the
blend tells them apart: a real video that is upscaled, soft or dark must not look "fake"
merely for being so (a self-blend resamples only the face; the mismatch is the signal).  The JPEG loss is simulated in torch (YCbCr, 4:2:0 chroma, 8x8 DCT with
the standard tables scaled by quality): it runs batched on the GPU with a quality per image,
which torchvision's (deprecated) per-call JPEG codec cannot.  The output is uint8, the
type every inference input has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU T.81 Annex K tables (luminance, chrominance)
_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32  # fmt: skip


@dataclass(frozen=True)
class PairAugmentConfig:
    flip_p: float = 0.5
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)
    resample_p: float = 0.3  # whole image down to a fraction of its size and back (an upscaled or re-encoded video)
    resample_scale: tuple[float, float] = (0.35, 0.9)
    blur_p: float = 0.2  # whole-image Gaussian blur (focus, motion, a soft lens)
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    tone_p: float = 0.3  # whole-image brightness and contrast
    tone: tuple[float, float] = (0.75, 1.25)


def degrade_pairs(real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator, cfg: PairAugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The same whole-image resampling, blur and tone change for ``real[i]`` and ``fake[i]`` (float [0, 1] NCHW)."""
    n, _, h, w = real.shape
    resample = (torch.rand(n, generator=gen) < cfg.resample_p).tolist()
    scales = torch.empty(n).uniform_(*cfg.resample_scale, generator=gen).tolist()
    blur = (torch.rand(n, generator=gen) < cfg.blur_p).tolist()
    sigmas = torch.empty(n).uniform_(*cfg.blur_sigma, generator=gen).tolist()
    tone = (torch.rand(n, generator=gen) < cfg.tone_p).to(real.device).view(n, 1, 1, 1)
    gain = torch.empty(n).uniform_(*cfg.tone, generator=gen).to(real.device).view(n, 1, 1, 1)
    contrast = torch.empty(n).uniform_(*cfg.tone, generator=gen).to(real.device).view(n, 1, 1, 1)
    out = []
    for x in (real, fake):
        x = x.clone()
        for i in range(n):  # per image: each has its own factor (a pair shares it)
            if resample[i]:
                small = F.interpolate(x[i : i + 1], size=(max(int(h * scales[i]), 8), max(int(w * scales[i]), 8)), mode="bilinear", antialias=True, align_corners=False)
                x[i : i + 1] = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
            if blur[i]:
                radius = max(int(3 * sigmas[i] + 0.5), 1)
                k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) / sigmas[i]) ** 2)
                k = k / k.sum()
                img = F.pad(x[i : i + 1], (radius, radius, radius, radius), mode="reflect")
                img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
                x[i : i + 1] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = torch.where(tone, ((x - mean) * contrast + mean) * gain, x)
        out.append(x.clamp(0, 1))
    return out[0], out[1]


def _dct_matrix(device: torch.device) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float32, device=device)
    basis = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16)
    scale = torch.full((8, 1), math.sqrt(2 / 8), device=device)
    scale[0, 0] = math.sqrt(1 / 8)
    return basis * scale  # orthonormal: D @ D.T == I


def quantisation_tables(quality: torch.Tensor) -> torch.Tensor:
    """(n, 2, 8, 8) luma/chroma tables for libjpeg's quality scaling (1..100)."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    base = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE], dtype=torch.float32, device=quality.device).view(1, 2, 8, 8)
    return torch.floor((base * scale.view(-1, 1, 1, 1) + 50) / 100).clamp(1, 255)


def _blocks(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(n, H, W) -> (n, H/8, W/8, 8, 8) after edge padding to multiples of 8."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    x = F.pad(x[:, None], (0, pw, 0, ph), mode="replicate")[:, 0]
    n, hh, ww = x.shape
    return x.view(n, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4), (h, w)


def _unblocks(b: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    n, by, bx = b.shape[:3]
    return b.permute(0, 1, 3, 2, 4).reshape(n, by * 8, bx * 8)[:, : size[0], : size[1]]


def _quantise(plane: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """One channel (n, H, W) in [0, 255] through DCT, rounding to the table, inverse DCT."""
    d = _dct_matrix(plane.device)
    blocks, size = _blocks(plane - 128.0)
    coeffs = d @ blocks @ d.T
    t = tables.view(-1, 1, 1, 8, 8)
    restored = d.T @ (torch.round(coeffs / t) * t) @ d
    return _unblocks(restored, size) + 128.0


def jpeg_like(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG compression artefacts on float NCHW RGB in [0, 1], one quality per image; returns uint8."""
    x = images.float().clamp(0, 1) * 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    tables = quantisation_tables(quality.to(x.device))
    h, w = y.shape[-2:]
    y = _quantise(y, tables[:, 0])
    chroma = F.avg_pool2d(F.pad(torch.stack([cb, cr], 1), (0, w % 2, 0, h % 2), mode="replicate"), 2)  # 4:2:0
    cb_small = _quantise(chroma[:, 0], tables[:, 1])
    cr_small = _quantise(chroma[:, 1], tables[:, 1])
    up = F.interpolate(torch.stack([cb_small, cr_small], 1), scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    cb, cr = up[:, 0] - 128, up[:, 1] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, rounded like an encoder would."""
    return (images.float().clamp(0, 1) * 255.0).round_().to(torch.uint8)


def augment_pairs(real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator, cfg: PairAugmentConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random degradation, flip and JPEG quality for ``real[i]`` and ``fake[i]`` (float [0, 1] NCHW) -> uint8."""
    cfg = cfg or PairAugmentConfig()
    n = real.shape[0]
    flip = (torch.rand(n, generator=gen) < cfg.flip_p).to(real.device).view(n, 1, 1, 1)
    compress = torch.rand(n, generator=gen) < cfg.jpeg_p
    quality = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (n,), generator=gen)
    if cfg.resample_p or cfg.blur_p or cfg.tone_p:
        real, fake = degrade_pairs(real, fake, gen, cfg)
    out = []
    for x in (real, fake):
        x = torch.where(flip, x.flip(-1), x)
        plain = to_uint8(x)
        if bool(compress.any()):
            squeezed = jpeg_like(x, quality)
            plain = torch.where(compress.to(x.device).view(n, 1, 1, 1), squeezed, plain)
        out.append(plain)
    return out[0], out[1]
