"""Our batched MTCNN cascade against facenet-pytorch's, box for box (matched by IoU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.faces import FaceDetector
from stream.scoring import iou
from tests.fixtures.media import astronaut_frame


def matched_ious(ref: np.ndarray, fast: np.ndarray) -> list[float]:
    """For each reference box, the IoU of its best match among ours (one-to-one, greedy)."""
    assert len(ref) == len(fast), (ref, fast)
    left = list(range(len(fast)))
    out = []
    for box in ref:
        best = max(left, key=lambda j: iou(tuple(box), tuple(fast[j])))
        out.append(iou(tuple(box), tuple(fast[best])))
        left.remove(best)
    return out


@pytest.fixture(scope="module")
def detectors() -> tuple[FaceDetector, FaceDetector]:
    return FaceDetector("cpu"), FaceDetector("cpu", fast_mtcnn=True)


def test_same_boxes_on_the_astronaut(detectors) -> None:
    ref, fast = detectors
    frames = [astronaut_frame(h, shift=s) for h, s in ((480, 0), (480, 40), (1080, -60), (2160, 30))]
    for r, f in zip(ref.detect(frames), fast.detect(frames), strict=True):
        assert len(r) == len(f) == 1
        assert min(matched_ious(r.boxes, f.boxes)) > 0.98
        assert abs(float(r.probs[0]) - float(f.probs[0])) < 1e-3


def test_same_faces_on_real_photos(detectors, images_dir) -> None:
    ref, fast = detectors
    for name in ("photo-multiface.jpg", "photo-paul_rudd.jpg", "photo-kate_siegel.jpg", "photo-angelina_jolie.jpg", "photo-noise.jpg"):
        image = np.asarray(Image.open(images_dir / name).convert("RGB"))
        [r], [f] = ref.detect([image]), fast.detect([image])
        assert len(r) == len(f), name
        if len(r):
            assert min(matched_ious(r.boxes, f.boxes)) > 0.98, name


def test_batch_equals_single_frames(detectors) -> None:
    _, fast = detectors
    frames = [astronaut_frame(480, shift=s) for s in (-50, 0, 50)]
    batched = fast.detect(frames)
    for frame, b in zip(frames, batched, strict=True):
        np.testing.assert_array_equal(fast.detect([frame])[0].boxes, b.boxes)


def facenet_pnet_stage(mtcnn, imgs, scales, threshold):
    """facenet-pytorch's own P-Net loop (detect_face), scale by scale, as the reference."""
    import torch
    from facenet_pytorch.models.utils.detect_face import generateBoundingBox, imresample
    from torchvision.ops import batched_nms

    h, w = imgs.shape[2:4]
    boxes, inds, picks, offset = [], [], [], 0
    for scale in scales:
        im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
        reg, probs = mtcnn.pnet(im_data)
        b, i = generateBoundingBox(reg, probs[:, 1], scale, threshold)
        boxes.append(b)
        inds.append(i)
        picks.append(batched_nms(b[:, :4], b[:, 4], i, 0.5) + offset)
        offset += b.shape[0]
    pick = torch.cat(picks)
    return torch.cat(boxes)[pick], torch.cat(inds)[pick]


def test_pnet_stage_equals_facenets_loop(detectors) -> None:
    """One nonzero and one NMS for the whole pyramid give facenet's candidates bit for bit, in its order."""
    import torch

    from detector.fast_mtcnn import pnet_stage

    _, fast = detectors
    mtcnn = fast.mtcnn
    for height, shifts in ((480, (-50, 0, 50)), (1080, (0, 90))):
        frames = np.stack([astronaut_frame(height, shift=s) for s in shifts])
        imgs = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
        h, w = imgs.shape[2:4]
        scales, scale, side = [], 12.0 / mtcnn.min_face_size, min(h, w) * 12.0 / mtcnn.min_face_size
        while side >= 12:
            scales.append(scale)
            scale *= mtcnn.factor
            side *= mtcnn.factor
        with torch.no_grad():
            ref_boxes, ref_inds = facenet_pnet_stage(mtcnn, imgs, scales, mtcnn.thresholds[0])
            boxes, inds = pnet_stage(mtcnn.pnet, imgs, scales, mtcnn.thresholds[0])
        assert len(ref_boxes) > 50  # the stage has real work to agree on
        assert torch.equal(boxes, ref_boxes)
        assert torch.equal(inds, ref_inds)


def test_one_nms_call_decides_as_a_call_per_group() -> None:
    """Integer boxes with tied scores in 6 groups: one offset call keeps exactly what a call per group keeps."""
    import torch
    from torchvision.ops import nms

    from detector.fast_mtcnn import nms_per_group

    generator = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 200, (600, 2), generator=generator).float()
    sizes = torch.randint(12, 60, (600, 1), generator=generator).float()
    boxes = torch.cat([corners, corners + sizes], dim=1)
    scores = torch.randint(0, 4, (600,), generator=generator).float() / 4 + 0.25  # many ties
    groups = torch.randint(0, 6, (600,), generator=generator)
    keep = nms_per_group(boxes, scores, groups, 0.5)
    for g in range(6):
        members = (groups == g).nonzero().squeeze(1)
        separate = members[nms(boxes[members], scores[members], 0.5)]
        assert torch.equal(keep[groups[keep] == g], separate)


def test_pyramid_graphs_run_eagerly_off_cuda() -> None:
    import torch

    from detector.cuda_graphs import PyramidGraphs
    from detector.fast_mtcnn import pnet_pyramid

    pnet = FaceDetector("cpu", fast_mtcnn=True).mtcnn.pnet
    imgs = torch.as_tensor(np.stack([astronaut_frame(240), astronaut_frame(240, shift=20)])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want, got = pnet_pyramid(pnet, imgs, [0.6, 0.3]), PyramidGraphs()(pnet, imgs, [0.6, 0.3])
    assert got.shapes == want.shapes
    assert torch.equal(got.probs, want.probs) and torch.equal(got.reg, want.reg)


def test_pyramid_graph_cache_keeps_the_most_recently_used() -> None:
    """A thread's P-Net graphs are bounded: frame sizes come and go (WebRTC senders adapt, a scan meets many)."""
    from detector.cuda_graphs import LruCache

    cache: LruCache[str, int | None] = LruCache(3)
    for key, value in (("a", 1), ("b", None), ("c", 3)):
        cache.put(key, value)
    assert cache.get("a") == (True, 1)  # now the most recent
    assert cache.get("b") == (True, None)  # a failed capture is remembered as such
    cache.put("d", 4)
    assert cache.keys() == ["a", "b", "d"] and cache.get("c") == (False, None)
    with pytest.raises(ValueError, match="at least one"):
        LruCache(0)


def test_scripted_cascade_finds_the_eager_boxes(detectors) -> None:
    """The TorchScript cascade (one GIL release for ~600 torch calls) compiles here and finds exactly the eager boxes."""
    import torch

    from detector.fast_mtcnn import detect_faces_fast, scripted_cascade
    from detector.scripting import is_compiled

    _, fast = detectors
    cascade = scripted_cascade(fast.mtcnn)
    assert is_compiled(cascade), "TorchScript fell back to eager"
    for height, shifts in ((480, (-50, 0, 50)), (1080, (0, 90)), (240, (0,))):
        frames = torch.as_tensor(np.stack([astronaut_frame(height, shift=s) for s in shifts]))
        with torch.no_grad():
            eager, scripted = detect_faces_fast(fast.mtcnn, frames), detect_faces_fast(fast.mtcnn, frames, cascade=cascade)
        assert sum(len(boxes) for boxes in eager) >= len(shifts)
        for want, got in zip(eager, scripted, strict=True):
            np.testing.assert_array_equal(got, want)


def test_scripted_detector_on_a_frame_without_faces() -> None:
    """Nothing past P-Net (an empty candidate set) must come back empty, not fail inside TorchScript."""
    scripted = FaceDetector("cpu", fast_mtcnn=True, scripted=True)
    [faces] = scripted.detect([np.zeros((360, 640, 3), dtype=np.uint8)])
    assert len(faces) == 0 and faces.boxes.shape == (0, 4)
