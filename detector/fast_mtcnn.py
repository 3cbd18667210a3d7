"""facenet-pytorch's MTCNN cascade with its per-box Python loops replaced by one gather.

facenet-pytorch crops every candidate box out of the frame and resizes it to
24x24 (R-Net) or 48x48 (O-Net) one box at a time, two kernel launches a box:
on a batch of 1080p frames with a crowd that is thousands of launches and it
dominates the detector's time on a GPU.  Here every crop of a stage comes from
one gather over an exact integer summed-area table of the frames: the same
area resize as facenet's, for all boxes at once.  P-Net's pyramid is thresholded with one
``nonzero`` and suppressed with one NMS call for every (frame, scale), not one a scale; its
forward (``pnet_pyramid``) has fixed shapes, so a GPU can replay it from a CUDA graph.  The nets,
weights, thresholds and box arithmetic are facenet-pytorch's own.
``tests/test_fast_mtcnn.py`` checks the boxes against facenet-pytorch's, bit for bit for P-Net's stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, fixed_batch_process, imresample, rerec
from torchvision.ops import batched_nms, nms


def _clip_boxes(boxes: torch.Tensor, w: int, h: int) -> tuple[torch.Tensor, ...]:
    """facenet's ``pad`` on the device: 1-based inclusive coordinates clipped to the image."""
    b = boxes[:, :4].trunc()
    x, y, ex, ey = b[:, 0].clamp(min=1), b[:, 1].clamp(min=1), b[:, 2].clamp(max=w), b[:, 3].clamp(max=h)
    return y, ey, x, ex


def integral_image(imgs: torch.Tensor) -> torch.Tensor:
    """Exact summed-area table (int64) of integer-valued frames, zero-padded on top and left."""
    table = imgs.round().to(torch.int64).cumsum(2).cumsum(3)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def _windows(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """adaptive_avg_pool2d's (== interpolate(mode="area")'s) input window per output cell."""
    i = torch.arange(size, device=start.device)
    lo = start[:, None] + (i[None, :] * length[:, None]) // size
    hi = start[:, None] + ((i[None, :] + 1) * length[:, None] + size - 1) // size
    return lo, hi


def _crops(table: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every crop of a stage resized to ``size`` in one gather; returns crops and the indices of the boxes with pixels.

    Equal to facenet's per-box ``imresample(img[:, :, y-1:ey, x-1:ex], size)`` (area resize) up to float
    rounding, since the window sums come from an exact integer summed-area table.
    """
    h, w = table.shape[2] - 1, table.shape[3] - 1
    y, ey, x, ex = _clip_boxes(boxes, w, h)
    kept = ((ey > y - 1) & (ex > x - 1)).nonzero().squeeze(1)  # one host synchronisation, not one per mask
    y0, x0 = (y[kept] - 1).long(), (x[kept] - 1).long()
    ys, ye = _windows(y0, ey[kept].long() - y0, size)
    xs, xe = _windows(x0, ex[kept].long() - x0, size)
    n = image_inds[kept].long()[:, None, None]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # (K, size, size, C)
        return table[n, :, rows[:, :, None], cols[:, None, :]]

    sums = at(ye, xe) - at(ys, xe) - at(ye, xs) + at(ys, xs)
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).unsqueeze(-1)
    crops = (sums.to(torch.float64) / area).to(torch.float32).permute(0, 3, 1, 2).contiguous()
    return crops, kept


def _refine(
    net: torch.nn.Module, table: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int, threshold: float, score_output: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R-Net or O-Net on every box's crop: the boxes that pass (corners + score), their frames and regressions.

    facenet's stage with its boolean masks replaced by the indices of one ``nonzero`` each (the same
    elements in the same order): two host synchronisations a stage instead of eleven.
    """
    crops, kept = _crops(table, boxes, image_inds, size)
    if kept.numel() == 0:  # no box has a pixel in its frame: nothing for the net
        return torch.zeros((0, 5), device=boxes.device), image_inds[:0], torch.zeros((0, 4), device=boxes.device)
    boxes, image_inds = boxes[kept], image_inds[kept]
    out = fixed_batch_process((crops - 127.5) * 0.0078125, net)
    score = out[score_output].permute(1, 0)[1, :]
    passing = (score > threshold).nonzero().squeeze(1)
    boxes = torch.cat((boxes[passing, :4], score[passing].unsqueeze(1)), dim=1)
    return boxes, image_inds[passing], out[0][passing]


def _cell_corners(size: int, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """generateBoundingBox's box corners for every P-Net output cell along one axis (same ops, same rounding)."""
    cells = torch.arange(size, device=device, dtype=torch.float32)
    return ((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()


def _first_offsets(counts: list[int], device: torch.device) -> torch.Tensor:
    """Where each of consecutive runs of ``counts`` items starts (exclusive prefix sums)."""
    return torch.tensor([0, *np.cumsum(counts)[:-1].tolist()], device=device)


@dataclass(frozen=True)
class Pyramid:
    """P-Net's output over the whole image pyramid, flattened: the input of the thresholding and NMS.

    Cells run scale by scale, then frame, row, column. ``x1``/``x2`` (``y1``/``y2``) hold every scale's
    cell corner table along x (y), one scale after another.
    """

    probs: torch.Tensor  # (C,) face probability of each cell
    reg: torch.Tensor  # (4, C) box regression of each cell
    x1: torch.Tensor
    x2: torch.Tensor
    y1: torch.Tensor
    y2: torch.Tensor
    shapes: tuple[tuple[int, int, int], ...]  # (frames, rows, cols) of each scale's output


PyramidFn = Callable[[torch.nn.Module, torch.Tensor, Sequence[float]], Pyramid]


def pnet_pyramid(pnet: torch.nn.Module, imgs: torch.Tensor, scales: Sequence[float]) -> Pyramid:
    """facenet's per-scale resize, normalisation and P-Net forward, every scale queued without a host sync.

    Fixed shapes for a given batch and frame size: ``detector/cuda_graphs.py`` captures it as one graph.
    """
    h, w = imgs.shape[2:4]
    device = imgs.device
    probs_flat, reg_flat, corners, shapes = [], [], [], []
    for scale in scales:
        im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
        reg, probs = pnet(im_data)
        probs_flat.append(probs[:, 1].reshape(-1))
        reg_flat.append(reg.permute(1, 0, 2, 3).reshape(4, -1))
        n, _, rows, cols = probs.shape
        shapes.append((n, rows, cols))
        corners.append((*_cell_corners(cols, scale, device), *_cell_corners(rows, scale, device)))
    x1, x2, y1, y2 = (torch.cat([c[i] for c in corners]) for i in range(4))
    return Pyramid(torch.cat(probs_flat), torch.cat(reg_flat, dim=1), x1, x2, y1, y2, tuple(shapes))


def nms_per_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group in one call: torchvision's coordinate offsets, always (its ``batched_nms``
    loops over groups past a box count, one host synchronisation each).

    With integer-valued coordinates (P-Net's cell corners) the offset boxes are exact in float32, so
    every IoU, and so every decision, equals a separate call per group; torchvision's sort is stable,
    so ties in score keep their input order too.
    """
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def pnet_stage(
    pnet: torch.nn.Module, imgs: torch.Tensor, scales: Sequence[float], threshold: float, pyramid: PyramidFn = pnet_pyramid
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over the pyramid, thresholded and NMS'd per (frame, scale): boxes (K, 9) and frame indices.

    facenet-pytorch thresholds and suppresses scale by scale, three host synchronisations a scale
    (nonzero, two boolean masks) and one more in each NMS, so the GPU idles between scales. Here
    every scale's P-Net is queued first (``pyramid``: eager, or a replayed CUDA graph), all cells
    above the threshold come out of one ``nonzero``, and one NMS call handles every (frame, scale):
    two host synchronisations in all. The values are facenet's own: each box corner is computed by
    the same expression on the same float32 cell coordinate, each group's NMS decides as facenet's
    call for that scale does (``nms_per_group``), and the kept boxes are put back in facenet's order
    (scale by scale, by score, ties in input order): equal bit for bit.

    ``pyramid`` may pad the batch (a captured graph's size): the cells of padded frames have
    probability -1 and never pass.
    """
    device = imgs.device
    out = pyramid(pnet, imgs, scales)
    shapes = out.shapes
    sizes = [n * rows * cols for n, rows, cols in shapes]
    cells = (out.probs >= threshold).nonzero().squeeze(1)  # the first host synchronisation
    if cells.numel() == 0:
        return torch.zeros((0, 9), device=device), torch.zeros((0,), dtype=torch.int64, device=device)
    starts = _first_offsets(sizes, device)
    scale_of = torch.searchsorted(starts, cells, right=True) - 1
    local = cells - starts[scale_of]
    rows_t = torch.tensor([r for _, r, _ in shapes], device=device)
    cols_t = torch.tensor([c for _, _, c in shapes], device=device)
    per_image = rows_t[scale_of] * cols_t[scale_of]
    image_inds = local // per_image
    y = (local % per_image) // cols_t[scale_of]
    x = local % cols_t[scale_of]
    # each scale's corner tables side by side: x and y offsets of a scale's first cell
    xi = _first_offsets([c for _, _, c in shapes], device)[scale_of] + x
    yi = _first_offsets([r for _, r, _ in shapes], device)[scale_of] + y
    reg = out.reg[:, cells].permute(1, 0)
    boxes = torch.cat([torch.stack([out.x1[xi], out.y1[yi], out.x2[xi], out.y2[yi], out.probs[cells]], dim=1), reg], dim=1)
    # NMS 0.5 per (frame, scale) in one call (the second synchronisation), then facenet's order:
    # scale by scale (a stable sort keeps each scale's kept boxes in NMS order)
    frames = max(n for n, _, _ in shapes)
    keep = nms_per_group(boxes[:, :4], boxes[:, 4], scale_of * frames + image_inds, 0.5)
    keep = keep[torch.sort(scale_of[keep], stable=True).indices]
    return boxes[keep], image_inds[keep]


def detect_faces_fast(mtcnn: MTCNN, imgs: torch.Tensor, pyramid: PyramidFn = pnet_pyramid) -> list[np.ndarray]:
    """Run the cascade on a batch (N, H, W, 3) of equal-size frames; returns per frame an (n, 5) array of box + prob."""
    pnet, rnet, onet = mtcnn.pnet, mtcnn.rnet, mtcnn.onet
    threshold, factor, minsize = mtcnn.thresholds, mtcnn.factor, mtcnn.min_face_size
    device = mtcnn.device
    imgs = torch.as_tensor(imgs, device=device)
    if imgs.ndim == 3:
        imgs = imgs.unsqueeze(0)
    imgs = imgs.permute(0, 3, 1, 2).float()
    batch_size = len(imgs)
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    scale_i = m
    while minl >= 12:
        scales.append(scale_i)
        scale_i *= factor
        minl *= factor

    boxes, image_inds = pnet_stage(pnet, imgs, scales, threshold[0], pyramid)

    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh, boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]
    ).permute(1, 0)
    boxes = rerec(boxes)

    table = integral_image(imgs) if len(boxes) > 0 else imgs
    if len(boxes) > 0:  # R-Net
        boxes, image_inds, mv = _refine(rnet, table, boxes, image_inds, 24, threshold[1], score_output=1)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    if len(boxes) > 0:  # O-Net
        boxes, image_inds, mv = _refine(onet, table, boxes, image_inds, 48, threshold[2], score_output=2)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes_np = boxes.cpu().numpy()
    inds_np = image_inds.cpu().numpy()
    return [boxes_np[inds_np == i] for i in range(batch_size)]


def detect_fast(
    mtcnn: MTCNN, imgs: torch.Tensor | np.ndarray, pyramid: PyramidFn = pnet_pyramid
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Same return shape as ``MTCNN.detect(imgs, landmarks=False)`` (largest face first)."""
    with torch.no_grad():
        per_frame = detect_faces_fast(mtcnn, torch.as_tensor(imgs), pyramid)
    boxes, probs = [], []
    for box in per_frame:
        if len(box) == 0:
            boxes.append(None)
            probs.append(None)
            continue
        order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]
        box = box[order]
        boxes.append(box[:, :4])
        probs.append(box[:, 4])
    return boxes, probs
