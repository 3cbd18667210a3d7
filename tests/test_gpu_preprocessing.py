"""The GPU preprocessing path, on CPU tensors, against what it replaces: PyAV (swscale), OpenCV and the PIL-like shrink.

Run with ``-s`` to see the measured agreement.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector import gpu_preprocessing
from detector.gpu_preprocessing import crops_to_batch, margin_crops, nv12_to_rgb, prepare_crops, shrink_for_detection
from detector.preprocessing import crop_with_margin, isotropic_shape, normalize_batch, stack_crops

X86 = platform.machine().lower() in {"x86_64", "amd64"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are small: torch's intra-op threads cost more than they give on a loaded 2-core runner (30x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """1024x1024 RGB: the astronaut and its mirror images, so every crop holds real detail up to the borders."""
    img = data.astronaut()
    top = np.concatenate([img, img[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def corner_box(height: int, width: int, frame_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A box whose margin crop is exactly ``height`` x ``width``, clipped by the bottom-right frame corner."""
    frame_h, frame_w = frame_shape[:2]
    ymin, xmin = frame_h - height + height // 3, frame_w - width + width // 3
    return xmin, ymin, xmin + width, ymin + height


def random_boxes(rng: np.random.Generator, count: int, frame_shape: Sequence[int], max_side: int) -> list[tuple[int, int, int, int]]:
    """Boxes of any aspect, some hanging over the frame's edges, all with a non-empty margin crop."""
    frame_h, frame_w = frame_shape[:2]
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:
        w = int(rng.integers(1, max_side))
        h = int(np.clip(w * rng.uniform(0.4, 2.5), 1, max_side))
        x0, y0 = int(rng.integers(-w // 2, frame_w - w // 2)), int(rng.integers(-h // 2, frame_h - h // 2))
        box = (x0, y0, x0 + w, y0 + h)
        if min(crop_with_margin(np.empty((frame_h, frame_w, 0)), box).shape[:2]) > 0:
            boxes.append(box)
    return boxes


def resize_kind(crop: np.ndarray, size: int) -> str:
    h, w = crop.shape[:2]
    return "copy" if max(h, w) == size else "cubic" if size > max(h, w) else "area"


def compare(frames: list[np.ndarray], boxes: Sequence[Sequence[int]], frame_index: Sequence[int], size: int) -> dict[str, tuple[int, float, int]]:
    """Per resize kind: (crops, fraction of identical uint8 values, max abs diff) of the GPU path vs ``stack_crops``."""
    crops = [crop_with_margin(frames[f], box) for box, f in zip(boxes, frame_index, strict=True)]
    expected = stack_crops(crops, size)
    got = prepare_crops([torch.from_numpy(f) for f in frames], np.asarray(boxes, dtype=np.int64), np.asarray(frame_index), size)
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    diff = np.abs(got.numpy().astype(np.int16) - expected)
    kinds = np.array([resize_kind(c, size) for c in crops])
    stats = {}
    for kind in ("area", "cubic", "copy"):
        chosen = kinds == kind
        if chosen.any():
            stats[kind] = (int(chosen.sum()), float((diff[chosen] == 0).mean()), int(diff[chosen].max()))
    print(f"\nsize {size}: " + ", ".join(f"{k}: {n} crops, {same:.7f} identical, max diff {mx}" for k, (n, same, mx) in stats.items()))
    return stats


def assert_close_to_opencv(stats: dict[str, tuple[int, float, int]]) -> None:
    # INTER_AREA replays OpenCV's float32 algorithm: identical.  INTER_CUBIC is IPP's float cubic, whose float
    # order is unpublished: a value within ~1e-5 of a half may round the other way (measured ~5e-6 of values).
    for kind, (_, same, max_diff) in stats.items():
        if kind == "cubic":
            assert max_diff <= 1 and same > 0.9999
        else:
            assert max_diff == 0, kind


# --- crops ----------------------------------------------------------------------------------------------


def test_prepared_crops_match_opencv_at_380(frame: np.ndarray) -> None:
    sizes = [
        (760, 500),  # 2x2 integer shrink: resizeAreaFast, rounding half up
        (761, 500),  # general INTER_AREA
        (1000, 7),  # 7 px wide: 2 px after resize
        (380, 211),  # longer side exactly 380: no resize
        (211, 380),
        (379, 380),
        (381, 200),  # barely shrunk
        (1, 1),  # a pixel enlarged to 380x380
        (2, 3),
        (190, 95),  # enlarged 2x
        (57, 101),
        (300, 299),
        (379, 200),  # enlarged, 200 px wide before and after
    ]
    boxes = [corner_box(h, w, frame.shape) for h, w in sizes] + random_boxes(np.random.default_rng(0), 16, frame.shape, 600)
    for (h, w), box in zip(sizes, boxes, strict=False):
        assert crop_with_margin(frame, box).shape[:2] == (h, w)
    stats = compare([frame], boxes, [0] * len(boxes), 380)
    assert set(stats) == {"area", "cubic", "copy"}
    assert_close_to_opencv(stats)


def test_integer_shrinks_take_opencvs_fast_area_path(frame: np.ndarray) -> None:
    sizes = [(300, 201), (400, 1), (200, 2), (200, 150), (500, 100), (100, 300), (400, 400)]
    boxes = [corner_box(h, w, frame.shape) for h, w in sizes]
    assert [isotropic_shape(h, w, 100) for h, w in sizes] == [(100, 67), (100, 1), (100, 1), (100, 75), (100, 20), (33, 100), (100, 100)]
    assert_close_to_opencv(compare([frame], boxes, [0] * len(boxes), 100))


def test_many_random_boxes_small_input(frame: np.ndarray) -> None:
    boxes = random_boxes(np.random.default_rng(1), 300, frame.shape, 150)
    stats = compare([frame], boxes, [0] * len(boxes), 64)
    assert stats["area"][0] > 50 and stats["cubic"][0] > 50
    assert_close_to_opencv(stats)


def test_frames_of_different_sizes_as_a_list_or_a_batch(frame: np.ndarray) -> None:
    frames = [frame[:600, :800].copy(), frame[100:, 50:].copy(), frame[:600, 200:1000].copy()]
    rng = np.random.default_rng(2)
    boxes, index = [], []
    for f in (2, 0, 1, 2, 0):
        boxes += random_boxes(rng, 2, frames[f].shape, 160)
        index += [f, f]
    assert_close_to_opencv(compare(frames, boxes, index, 96))
    batch = torch.from_numpy(np.stack([frames[0], frames[2]]))  # a decoded (N, H, W, 3) batch
    from_batch = prepare_crops(batch, np.asarray(boxes[:4]), [1, 1, 0, 0], 96)
    from_list = prepare_crops([batch[1], batch[0]], np.asarray(boxes[:4]), [0, 0, 1, 1], 96)
    torch.testing.assert_close(from_batch, from_list, rtol=0, atol=0)


def test_classifier_batch_is_normalize_batch_of_the_prepared_crops(frame: np.ndarray) -> None:
    boxes = random_boxes(np.random.default_rng(3), 8, frame.shape, 160) + [corner_box(1, 1, frame.shape), corner_box(64, 300, frame.shape)]
    cpu_prepared = stack_crops([crop_with_margin(frame, b) for b in boxes], 128)
    frames, index = [torch.from_numpy(frame)], [0] * len(boxes)
    x = crops_to_batch(frames, np.asarray(boxes), index, 128)
    assert x.shape == (len(boxes), 3, 128, 128) and x.dtype == torch.float32
    torch.testing.assert_close(x, normalize_batch(prepare_crops(frames, np.asarray(boxes), index, 128)), rtol=0, atol=0)
    reference = normalize_batch(cpu_prepared)
    same = torch.from_numpy(cpu_prepared).permute(0, 3, 1, 2) == prepare_crops(frames, np.asarray(boxes), index, 128).permute(0, 3, 1, 2)
    assert torch.equal(x[same], reference[same])  # bit-identical wherever the uint8 crop is
    one_level = 1 / 255 / min(0.229, 0.224, 0.225)
    assert float((x - reference).abs().max()) <= one_level + 1e-6
    half = crops_to_batch(frames, np.asarray(boxes), index, 128, out_dtype=torch.float16, channels_last=True)
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(half, x.half(), rtol=0, atol=0)


def test_work_in_bounded_steps_gives_the_same_bytes(frame: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    boxes = np.asarray(random_boxes(np.random.default_rng(4), 9, frame.shape, 200))
    whole = prepare_crops([torch.from_numpy(frame)], boxes, [0] * len(boxes), 80)
    monkeypatch.setattr(gpu_preprocessing, "_CHUNK", 80 * 80 * 2 + 1)  # two crops, 162 source rows a step
    torch.testing.assert_close(prepare_crops([torch.from_numpy(frame)], boxes, [0] * len(boxes), 80), whole, rtol=0, atol=0)


def test_scripted_resampling_gives_the_same_bytes(frame: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TorchScript resampling (what CUDA frames take: one GIL release a batch) equals the eager one, in bounded steps too."""
    from detector.scripting import is_compiled

    assert is_compiled(gpu_preprocessing.scripted_resample()), "TorchScript fell back to eager"
    rng = np.random.default_rng(5)
    frames = [torch.from_numpy(frame), torch.from_numpy(frame[:500, 100:900].copy())]
    boxes = np.asarray(random_boxes(rng, 6, frame.shape, 500) + random_boxes(rng, 4, frames[1].shape, 40) + [corner_box(192, 96, frame.shape)])  # the last: 2x2 resizeAreaFast
    index = [0] * 6 + [1] * 4 + [0]
    for chunk in (1 << 21, 96 * 96 * 2 + 1):  # the default step, and two crops a step
        monkeypatch.setattr(gpu_preprocessing, "_CHUNK", chunk)
        eager = prepare_crops(frames, boxes, index, 96, scripted=False)
        torch.testing.assert_close(prepare_crops(frames, boxes, index, 96, scripted=True), eager, rtol=0, atol=0)


def test_no_boxes_gives_an_empty_batch(frame: np.ndarray) -> None:
    empty = crops_to_batch([torch.from_numpy(frame)], np.zeros((0, 4), dtype=np.int64), [], 380)
    assert empty.shape == (0, 3, 380, 380)
    assert margin_crops([torch.from_numpy(frame)], [], []) == []


def test_empty_margin_crop_is_refused_as_on_the_cpu(frame: np.ndarray) -> None:
    outside = [(2000, 10, 2050, 60)]
    with pytest.raises(ValueError, match="empty"):
        prepare_crops([torch.from_numpy(frame)], outside, [0], 380)
    with pytest.raises(ValueError, match="out of range"):
        prepare_crops([torch.from_numpy(frame)], [(0, 0, 10, 10)], [1], 380)


def test_margin_crops_are_views_of_the_frames(frame: np.ndarray) -> None:
    tensor = torch.from_numpy(frame)
    boxes = np.array([(-20, 30, 100, 170), (900, 950, 1100, 1090), (500, 500, 501, 501)])
    crops = margin_crops([tensor], boxes, [0, 0, 0])
    for crop, box in zip(crops, boxes, strict=True):
        np.testing.assert_array_equal(crop.numpy(), crop_with_margin(frame, box))
        assert crop.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()


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
