"""facenet-pytorch's MTCNN cascade with its per-box Python loops replaced by one gather.

facenet-pytorch crops every candidate box out of the frame and resizes it to
24x24 (R-Net) or 48x48 (O-Net) one box at a time, two kernel launches a box:
on a batch of 1080p frames with a crowd that is thousands of launches and it
dominates the detector's time on a GPU.  Here every crop of a stage comes from
one gather over an exact integer summed-area table of the frames: the same
area resize as facenet's, for all boxes at once.  Everything else (pyramid, thresholds, NMS, box regression) is
facenet-pytorch's own code, so the nets and weights are the same.
``tests/test_fast_mtcnn.py`` checks the boxes against facenet-pytorch's.
"""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, fixed_batch_process, imresample, rerec
from torchvision.ops import batched_nms


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
    """Every crop of a stage resized to ``size`` in one gather; returns crops and the mask of boxes with pixels.

    Equal to facenet's per-box ``imresample(img[:, :, y-1:ey, x-1:ex], size)`` (area resize) up to float
    rounding, since the window sums come from an exact integer summed-area table.
    """
    h, w = table.shape[2] - 1, table.shape[3] - 1
    y, ey, x, ex = _clip_boxes(boxes, w, h)
    valid = (ey > y - 1) & (ex > x - 1)
    y0, x0 = (y[valid] - 1).long(), (x[valid] - 1).long()
    ys, ye = _windows(y0, ey[valid].long() - y0, size)
    xs, xe = _windows(x0, ex[valid].long() - x0, size)
    n = image_inds[valid].long()[:, None, None]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # (K, size, size, C)
        return table[n, :, rows[:, :, None], cols[:, None, :]]

    sums = at(ye, xe) - at(ys, xe) - at(ye, xs) + at(ys, xs)
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).unsqueeze(-1)
    crops = (sums.to(torch.float64) / area).to(torch.float32).permute(0, 3, 1, 2).contiguous()
    return crops, valid


def _cell_corners(size: int, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """generateBoundingBox's box corners for every P-Net output cell along one axis (same ops, same rounding)."""
    cells = torch.arange(size, device=device, dtype=torch.float32)
    return ((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()


def _first_offsets(counts: list[int], device: torch.device) -> torch.Tensor:
    """Where each of consecutive runs of ``counts`` items starts (exclusive prefix sums)."""
    return torch.tensor([0, *np.cumsum(counts)[:-1].tolist()], device=device)


def pnet_stage(pnet: torch.nn.Module, imgs: torch.Tensor, scales: list[float], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over the pyramid, thresholded and NMS'd per (frame, scale): boxes (K, 9) and frame indices.

    facenet-pytorch thresholds and suppresses scale by scale, three host synchronisations a scale
    (nonzero, two boolean masks) and one more in each NMS, so the GPU idles between scales. Here
    every scale's P-Net is queued first and all cells above the threshold come out of one
    ``nonzero``; only the per-scale NMS calls still wait for the device (as little work is queued
    behind them by then). The values are facenet's own: each box corner is computed by the same
    expression on the same float32 cell coordinate, and each scale's NMS gets exactly facenet's
    inputs, so the result is equal bit for bit and in facenet's order.
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
    probs_all = torch.cat(probs_flat)
    sizes = [n * rows * cols for n, rows, cols in shapes]
    cells = (probs_all >= threshold).nonzero().squeeze(1)  # the one host synchronisation of the pyramid
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
    x_starts = _first_offsets([c for _, _, c in shapes], device)
    y_starts = _first_offsets([r for _, r, _ in shapes], device)
    x1, x2 = (torch.cat([c[i] for c in corners]) for i in (0, 1))
    y1, y2 = (torch.cat([c[i] for c in corners]) for i in (2, 3))
    xi, yi = x_starts[scale_of] + x, y_starts[scale_of] + y
    reg = torch.cat(reg_flat, dim=1)[:, cells].permute(1, 0)
    boxes = torch.cat([torch.stack([x1[xi], y1[yi], x2[xi], y2[yi], probs_all[cells]], dim=1), reg], dim=1)
    # NMS 0.5 per (frame, scale), scale by scale as facenet calls it: identical inputs in identical
    # order, so ties in score (saturated probabilities of 1.0 are common) resolve as facenet's do
    ends = torch.searchsorted(cells, torch.tensor(np.cumsum(sizes).tolist(), device=device)).tolist()
    keep, begin = [], 0
    for end in ends:
        if end > begin:
            keep.append(batched_nms(boxes[begin:end, :4], boxes[begin:end, 4], image_inds[begin:end], 0.5) + begin)
        begin = end
    keep = torch.cat(keep)
    return boxes[keep], image_inds[keep]


def detect_faces_fast(mtcnn: MTCNN, imgs: torch.Tensor) -> list[np.ndarray]:
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

    boxes, image_inds = pnet_stage(pnet, imgs, scales, threshold[0])

    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh, boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]
    ).permute(1, 0)
    boxes = rerec(boxes)

    table = integral_image(imgs) if len(boxes) > 0 else imgs
    if len(boxes) > 0:  # R-Net
        crops, valid = _crops(table, boxes, image_inds, 24)
        boxes, image_inds = boxes[valid], image_inds[valid]
        out = fixed_batch_process((crops - 127.5) * 0.0078125, rnet)
        score = out[1].permute(1, 0)[1, :]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out[0].permute(1, 0)[:, ipass].permute(1, 0)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    if len(boxes) > 0:  # O-Net
        crops, valid = _crops(table, boxes, image_inds, 48)
        boxes, image_inds = boxes[valid], image_inds[valid]
        out = fixed_batch_process((crops - 127.5) * 0.0078125, onet)
        score = out[2].permute(1, 0)[1, :]
        ipass = score > threshold[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out[0].permute(1, 0)[:, ipass].permute(1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes_np = boxes.cpu().numpy()
    inds_np = image_inds.cpu().numpy()
    return [boxes_np[inds_np == i] for i in range(batch_size)]


def detect_fast(mtcnn: MTCNN, imgs: torch.Tensor | np.ndarray) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Same return shape as ``MTCNN.detect(imgs, landmarks=False)`` (largest face first)."""
    with torch.no_grad():
        per_frame = detect_faces_fast(mtcnn, torch.as_tensor(imgs))
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
