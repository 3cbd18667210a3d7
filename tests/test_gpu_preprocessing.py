"""The GPU preprocessing path, on CPU tensors, against what it replaces: PyAV (swscale) and the PIL-like shrink.

Run with ``-s`` to see the measured agreement.
"""

from __future__ import annotations

import platform
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector.gpu_preprocessing import nv12_to_rgb, shrink_for_detection

X86 = platform.machine().lower() in {"x86_64", "amd64"}


# --- NV12 -------------------------------------------------------------------------------------------------


def decoded_frames(path: Path, width: int, height: int, count: int = 3) -> list[av.VideoFrame]:
    """``count`` astronaut frames (shifting) through a real libx264 yuv420p encode, decoded by PyAV."""
    img = data.astronaut()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(count):
            rgb = np.ascontiguousarray(np.roll(img, 7 * i, axis=1)[:height, :width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def nv12_planes(frame: av.VideoFrame) -> np.ndarray:
    """The (H*3//2, W) NV12 array of a decoded frame, dropping each plane's line padding."""
    nv12 = frame.reformat(format="nv12")
    luma, chroma = nv12.planes
    y = np.frombuffer(luma, np.uint8).reshape(frame.height, luma.line_size)[:, : frame.width]
    uv = np.frombuffer(chroma, np.uint8).reshape(frame.height // 2, chroma.line_size)[:, : frame.width]
    return np.concatenate([y, uv])


@pytest.mark.parametrize(("width", "height"), [(512, 384), (330, 250)])  # a SIMD-friendly width and one that is not
def test_nv12_to_rgb_matches_pyav(tmp_path: Path, width: int, height: int) -> None:
    frames = decoded_frames(tmp_path / "astronaut.mp4", width, height)
    nv12 = torch.from_numpy(np.stack([nv12_planes(f) for f in frames]))
    expected = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    got = nv12_to_rgb(nv12)
    assert got.shape == (len(frames), height, width, 3) and got.dtype == torch.uint8
    diff = np.abs(got.numpy().astype(np.int16) - expected)
    print(f"\nNV12 {width}x{height} vs PyAV rgb24: mean abs diff {diff.mean():.4f}, max {diff.max()}, identical {(diff == 0).mean():.6f}")
    if X86:  # swscale's x86 SIMD yuv420p->rgb24 arithmetic, replayed exactly
        assert diff.max() == 0
    assert diff.mean() < 1.0 and diff.max() <= 3  # swscale's C fallback: nearest chroma, its own rounding
    torch.testing.assert_close(nv12_to_rgb(nv12[1]), got[1], rtol=0, atol=0)
    padded = torch.zeros((nv12.shape[1], width + 64), dtype=torch.uint8)
    padded[:, :width] = nv12[0]  # a decoder's pitched surface, sliced to the picture
    torch.testing.assert_close(nv12_to_rgb(padded[:, :width]), got[0], rtol=0, atol=0)


def test_nv12_shape_checks() -> None:
    with pytest.raises(ValueError):
        nv12_to_rgb(torch.zeros((10, 16), dtype=torch.uint8))  # 10 rows is no H * 3 // 2 of an even H
    with pytest.raises(ValueError):
        nv12_to_rgb(torch.zeros((12, 16), dtype=torch.float32))


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
