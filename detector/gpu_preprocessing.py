"""The CPU preprocessing, done where decoded frames already are: on the GPU, with no trip to the host.

Pure torch and device-agnostic (tested on CPU tensors).  Each step reproduces the arithmetic of the
library the CPU path calls, not just its formula, so the classifier sees (nearly always) the same bytes:

- ``nv12_to_rgb``: FFmpeg swscale's x86 SIMD YUV->RGB (what PyAV's ``to_ndarray(format="rgb24")``
  runs on usual yuv420p video), bit-exact on that path.
- ``shrink_for_detection``: the PIL-like antialiased bicubic shrink before MTCNN (not bit-exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# swscale's 16-bit fixed-point BT.601 limited-range coefficients (ff_yuv2rgb_c_init_tables: cy = 65536*255/219
# and the ITU-601 inverse table, each scaled by 2^13 and rounded), as its x86 yuv420->rgb24 code uses them.
_SWS_Y_COEFF, _SWS_Y_OFFSET = 9539, 128
_SWS_V2R, _SWS_U2G, _SWS_V2G, _SWS_U2B = 13075, -3209, -6660, 16525


def nv12_to_rgb(nv12: torch.Tensor) -> torch.Tensor:
    """NV12 (uint8 (H*3//2, W): Y plane, then interleaved U,V at half resolution) -> RGB uint8 (H, W, 3).

    Also a batch: (N, H*3//2, W) -> (N, H, W, 3).  BT.601 limited range with each chroma sample
    covering its 2x2 luma block, in swscale's x86 SIMD integer arithmetic (``pmulhw`` on values
    shifted left by 3, a floor per term, saturation): bit-exact with PyAV's ``to_ndarray("rgb24")``
    on x86 hosts.  swscale's C fallback (other CPUs) rounds differently, by up to 3 levels.
    """
    if nv12.dtype != torch.uint8 or nv12.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H*3//2, W) or (N, H*3//2, W) NV12, got {nv12.dtype} {tuple(nv12.shape)}")
    batch = nv12 if nv12.ndim == 3 else nv12.unsqueeze(0)
    n, rows, width = batch.shape
    if rows % 3 or width % 2:
        raise ValueError(f"NV12 needs an even height and width, got {rows} rows of {width}")
    height = rows // 3 * 2
    y = batch[:, :height].to(torch.int32)
    uv = batch[:, height:].reshape(n, height // 2, width // 2, 2).to(torch.int32)
    u, v = uv[..., 0] * 8 - 1024, uv[..., 1] * 8 - 1024  # (U - 128) << 3
    luma = ((y * 8 - _SWS_Y_OFFSET) * _SWS_Y_COEFF) >> 16  # >> on int32 floors, as pmulhw does
    chroma = torch.stack([(v * _SWS_V2R) >> 16, ((u * _SWS_U2G) >> 16) + ((v * _SWS_V2G) >> 16), (u * _SWS_U2B) >> 16], dim=-1)
    # Each chroma sample is added to its 2x2 block of luma by broadcasting, without upsampling it.
    rgb = luma.to(torch.int16).view(n, height // 2, 2, width // 2, 2, 1) + chroma.to(torch.int16).view(n, height // 2, 1, width // 2, 1, 3)
    rgb = rgb.clamp_(0, 255).to(torch.uint8).view(n, height, width, 3)
    return rgb if nv12.ndim == 3 else rgb[0]


def shrink_for_detection(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, h, w, 3) uint8 for ``size`` (w, h): antialiased bicubic, PIL-like (not bit-exact).

    Keeps a 1080p resize before MTCNN off the CPU; the same size returns ``frames`` itself.
    """
    width, height = size
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


__all__ = ["nv12_to_rgb", "shrink_for_detection"]
