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
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, fixed_batch_process, generateBoundingBox, imresample, rerec
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

    boxes_list, inds_list, picks, offset = [], [], [], 0
    for scale in scales:
        im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
        reg, probs = pnet(im_data)
        boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes_list.append(boxes_scale)
        inds_list.append(inds_scale)
        picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5) + offset)
        offset += boxes_scale.shape[0]
    boxes = torch.cat(boxes_list)[torch.cat(picks)]
    image_inds = torch.cat(inds_list)[torch.cat(picks)]

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
