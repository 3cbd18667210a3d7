"""FFmpeg's NVDEC backend where it can be checked without a GPU: the plane layout it borrows, the refusal path.

On the GPU machine ``tests/test_gpu_pipeline.py`` decodes real clips through it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from detector.gpu_preprocessing import nv12_planes_to_rgb
from stream.sources.config import NVDEC, StreamConfig
from stream.sources.ffmpeg_nvdec import ffmpeg_nvdec_available, nv12_planes
from stream.sources.url import VideoSource
from tests.fixtures.decoding import clip, cpu_reference


def test_nv12_planes_give_ffmpegs_rgb(tmp_path: Path) -> None:
    """The two planes as DLPack exports them (row pitch kept, chroma (H/2, W/2, 2)) -> swscale's RGB, bit for bit."""
    path = clip(tmp_path, height=360)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            nv12 = frame.reformat(format="nv12")
            y, uv = nv12_planes(nv12)
            assert tuple(y.shape) == (frame.height, frame.width) and tuple(uv.shape) == (frame.height // 2, frame.width // 2, 2)
            np.testing.assert_array_equal(nv12_planes_to_rgb(y, uv).numpy(), frame.to_ndarray(format="rgb24"))
            if i == 5:
                break


@pytest.fixture
def ffmpeg_backend() -> object:
    saved = NVDEC.backend
    NVDEC.backend = "ffmpeg"
    yield NVDEC
    NVDEC.backend = saved


def test_without_a_usable_gpu_the_cpu_decodes_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture, ffmpeg_backend: object) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU suite covers this backend")
    assert ffmpeg_nvdec_available(0) == "no CUDA device"
    path = clip(tmp_path, frames=20)
    reference = cpu_reference(path)

    async def run() -> tuple[list, object]:
        source = VideoSource(StreamConfig(name="hw", url=str(path), sample_fps=100), nvdec_gpu=0)
        source.start()
        frames = []
        while (frame := await source.next_frame()) is not None:
            frames.append(frame)
        stats = source.stats
        await source.stop()
        return frames, stats

    with caplog.at_level(logging.WARNING):
        frames, stats = asyncio.run(run())
    assert stats.decoder == "cpu" and len(frames) == 20
    np.testing.assert_array_equal(frames[3].image, reference[round(frames[3].pts_s, 3)])
    assert sum("no CUDA device" in r.getMessage() for r in caplog.records) == 1  # said once, not per frame
