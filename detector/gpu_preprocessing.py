"""The CPU preprocessing, done where decoded frames already are: on the GPU, with no trip to the host.

Pure torch and device-agnostic (tested on CPU tensors).

- ``shrink_for_detection``: the PIL-like antialiased bicubic shrink before MTCNN (not bit-exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


__all__ = ["shrink_for_detection"]
