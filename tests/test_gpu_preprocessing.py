"""The GPU preprocessing path, on CPU tensors, against what it replaces: the PIL-like shrink.

Run with ``-s`` to see the measured agreement.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from skimage import data

from detector.gpu_preprocessing import shrink_for_detection

# --- detection shrink -----------------------------------------------------------------------------------


def test_shrink_for_detection_is_the_antialiased_bicubic_and_close_to_pil() -> None:
    img = data.astronaut()
    frames = torch.from_numpy(np.stack([img, img[::-1]]))
    got = shrink_for_detection(frames, (300, 200))
    assert got.shape == (2, 200, 300, 3) and got.dtype == torch.uint8
    x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(200, 300), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(got, x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1), rtol=0, atol=0)
    pil = np.asarray(Image.fromarray(img).resize((300, 200)))
    diff = np.abs(got[0].numpy().astype(np.int16) - pil)
    assert diff.mean() < 0.5  # PIL-like, not bit-exact
    assert shrink_for_detection(frames, (512, 512)) is frames
