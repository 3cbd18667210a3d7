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
from typing import NamedTuple

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, imresample
from torchvision.ops import batched_nms, nms

from detector.scripting import compile_or_eager


def _clip_boxes(boxes: torch.Tensor, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
    # (K, size, size, C) window corners of the summed-area table
    sums = table[n, :, ye[:, :, None], xe[:, None, :]] - table[n, :, ys[:, :, None], xe[:, None, :]]
    sums = sums - table[n, :, ye[:, :, None], xs[:, None, :]] + table[n, :, ys[:, :, None], xs[:, None, :]]
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).unsqueeze(-1)
    crops = (sums.to(torch.float64) / area).to(torch.float32).permute(0, 3, 1, 2).contiguous()
    return crops, kept


def _passing(boxes: torch.Tensor, image_inds: torch.Tensor, kept: torch.Tensor, reg: torch.Tensor, prob: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A refining stage's verdict on the boxes ``kept`` (those with pixels): the boxes that pass (corners + score),
    their frames and regressions.

    facenet's stage with its boolean masks replaced by the indices of one ``nonzero`` (the same elements
    in the same order).
    """
    boxes, image_inds = boxes[kept], image_inds[kept]
    score = prob.permute(1, 0)[1, :]
    passing = (score > threshold).nonzero().squeeze(1)
    return torch.cat((boxes[passing, :4], score[passing].unsqueeze(1)), dim=1), image_inds[passing], reg[passing]


def bbreg(boundingbox: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's ``bbreg`` (the same expressions), typed for TorchScript."""
    w = boundingbox[:, 2] - boundingbox[:, 0] + 1
    h = boundingbox[:, 3] - boundingbox[:, 1] + 1
    b1 = boundingbox[:, 0] + reg[:, 0] * w
    b2 = boundingbox[:, 1] + reg[:, 1] * h
    b3 = boundingbox[:, 2] + reg[:, 2] * w
    b4 = boundingbox[:, 3] + reg[:, 3] * h
    boundingbox[:, :4] = torch.stack([b1, b2, b3, b4]).permute(1, 0)
    return boundingbox


def rerec(bbox: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's ``rerec`` (the same expressions), typed for TorchScript: boxes made square."""
    h = bbox[:, 3] - bbox[:, 1]
    w = bbox[:, 2] - bbox[:, 0]
    side = torch.max(w, h)
    bbox[:, 0] = bbox[:, 0] + w * 0.5 - side * 0.5
    bbox[:, 1] = bbox[:, 1] + h * 0.5 - side * 0.5
    bbox[:, 2:4] = bbox[:, :2] + side.repeat(2, 1).permute(1, 0)
    return bbox


def _cell_corners(size: int, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """generateBoundingBox's box corners for every P-Net output cell along one axis (same ops, same rounding)."""
    cells = torch.arange(size, device=device, dtype=torch.float32)
    return ((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()


def _first_offsets(counts: list[int], device: torch.device) -> torch.Tensor:
    """Where each of consecutive runs of ``counts`` items starts (exclusive prefix sums)."""
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    return torch.tensor(starts, device=device)


class PyramidCells(NamedTuple):
    """A ``Pyramid``'s tensors as ``candidates`` and ``Cascade`` take them (TorchScript cannot take the dataclass)."""

    probs: torch.Tensor
    reg: torch.Tensor
    x1: torch.Tensor
    x2: torch.Tensor
    y1: torch.Tensor
    y2: torch.Tensor
    shapes: list[list[int]]


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

    def cells(self) -> PyramidCells:
        """What ``candidates`` and ``Cascade`` take."""
        return PyramidCells(self.probs, self.reg, self.x1, self.x2, self.y1, self.y2, [list(shape) for shape in self.shapes])


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


def candidates(pyramid: PyramidCells, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net's pyramid (a ``Pyramid``'s cells) thresholded and NMS'd per (frame, scale): boxes (K, 9) and frame indices.

    facenet-pytorch thresholds and suppresses scale by scale, three host synchronisations a scale
    (nonzero, two boolean masks) and one more in each NMS, so the GPU idles between scales. Here all
    cells above the threshold come out of one ``nonzero``, and one NMS call handles every (frame,
    scale): two host synchronisations in all. The values are facenet's own: each box corner is computed
    by the same expression on the same float32 cell coordinate, each group's NMS decides as facenet's
    call for that scale does (``nms_per_group``), and the kept boxes are put back in facenet's order
    (scale by scale, by score, ties in input order): equal bit for bit.

    The pyramid may come padded (a captured graph's batch size): the cells of padded frames have
    probability -1 and never pass.
    """
    probs, reg, x1, x2, y1, y2, shapes = pyramid
    device = probs.device
    sizes = [shape[0] * shape[1] * shape[2] for shape in shapes]
    cells = (probs >= threshold).nonzero().squeeze(1)  # the first host synchronisation
    if cells.numel() == 0:
        return torch.zeros((0, 9), device=device), torch.zeros((0,), dtype=torch.int64, device=device)
    starts = _first_offsets(sizes, device)
    scale_of = torch.searchsorted(starts, cells, right=True) - 1
    local = cells - starts[scale_of]
    rows_t = torch.tensor([shape[1] for shape in shapes], device=device)
    cols_t = torch.tensor([shape[2] for shape in shapes], device=device)
    per_image = rows_t[scale_of] * cols_t[scale_of]
    image_inds = local // per_image
    y = (local % per_image) // cols_t[scale_of]
    x = local % cols_t[scale_of]
    # each scale's corner tables side by side: x and y offsets of a scale's first cell
    xi = _first_offsets([shape[2] for shape in shapes], device)[scale_of] + x
    yi = _first_offsets([shape[1] for shape in shapes], device)[scale_of] + y
    cell_reg = reg[:, cells].permute(1, 0)
    boxes = torch.cat([torch.stack([x1[xi], y1[yi], x2[xi], y2[yi], probs[cells]], dim=1), cell_reg], dim=1)
    # NMS 0.5 per (frame, scale) in one call (the second synchronisation), then facenet's order:
    # scale by scale (a stable sort keeps each scale's kept boxes in NMS order)
    frames = max([shape[0] for shape in shapes])
    keep = nms_per_group(boxes[:, :4], boxes[:, 4], scale_of * frames + image_inds, 0.5)
    keep = keep[torch.sort(scale_of[keep], stable=True).indices]
    return boxes[keep], image_inds[keep]


def pnet_stage(pnet: torch.nn.Module, imgs: torch.Tensor, scales: Sequence[float], threshold: float, pyramid: PyramidFn = pnet_pyramid) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over the pyramid (``pyramid``: eager, or a replayed CUDA graph), then ``candidates``."""
    return candidates(pyramid(pnet, imgs, scales).cells(), threshold)


class Cascade(torch.nn.Module):
    """Everything after P-Net's pyramid, up to O-Net's box regression: candidates, R-Net, O-Net.

    Written for TorchScript (``scripted_cascade``): a scripted call runs its ~600 small torch calls in
    C++ with the GIL released once, where eager Python takes and releases the GIL around each of them;
    with the event loop and the decoders' reader threads beside, every re-take can wait, and that,
    not the GPU, bounded detection (measured on an H200, ``bench/results/h200-engine-gil-and-pnet-graphs.json``).
    The same code runs eagerly too; both compute what facenet-pytorch's ``detect_face`` does.
    """

    def __init__(self, rnet: torch.nn.Module, onet: torch.nn.Module, thresholds: Sequence[float]) -> None:
        super().__init__()
        self.rnet = rnet
        self.onet = onet
        self.thresholds = [float(t) for t in thresholds]

    def _rnet(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """facenet's ``fixed_batch_process`` (512 crops at a time): regressions and probabilities."""
        regs: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for i in range(0, crops.shape[0], 512):
            reg, prob = self.rnet(crops[i : i + 512])
            regs.append(reg)
            probs.append(prob)
        return torch.cat(regs, dim=0), torch.cat(probs, dim=0)

    def _onet(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regs: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for i in range(0, crops.shape[0], 512):
            reg, _, prob = self.onet(crops[i : i + 512])
            regs.append(reg)
            probs.append(prob)
        return torch.cat(regs, dim=0), torch.cat(probs, dim=0)

    def forward(self, imgs: torch.Tensor, pyramid: PyramidCells) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (K, 5: corners and O-Net's score) after O-Net's regression, and their frames; facenet's final
        "Min" NMS (NumPy, on the host) is the caller's."""
        boxes, image_inds = candidates(pyramid, self.thresholds[0])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh, boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]).permute(1, 0)
        boxes = rerec(boxes)
        if boxes.shape[0] == 0:
            return boxes, image_inds
        table = integral_image(imgs)
        # R-Net
        crops, kept = _crops(table, boxes, image_inds, 24)
        if kept.numel() == 0:  # no box has a pixel in its frame: nothing for the net
            return boxes[:0], image_inds[:0]
        net_reg, net_prob = self._rnet((crops - 127.5) * 0.0078125)
        boxes, image_inds, mv = _passing(boxes, image_inds, kept, net_reg, net_prob, self.thresholds[1])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))
        if boxes.shape[0] == 0:
            return boxes, image_inds
        # O-Net
        crops, kept = _crops(table, boxes, image_inds, 48)
        if kept.numel() == 0:
            return boxes[:0], image_inds[:0]
        net_reg, net_prob = self._onet((crops - 127.5) * 0.0078125)
        boxes, image_inds, mv = _passing(boxes, image_inds, kept, net_reg, net_prob, self.thresholds[2])
        return bbreg(boxes, mv), image_inds


CascadeFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def scripted_cascade(mtcnn: MTCNN) -> CascadeFn:
    """``Cascade`` compiled by TorchScript (``detector/scripting.py``), or eager with a warning."""
    return compile_or_eager(Cascade(mtcnn.rnet, mtcnn.onet, mtcnn.thresholds), "MTCNN's cascade")


def detect_faces_fast(mtcnn: MTCNN, imgs: torch.Tensor, pyramid: PyramidFn = pnet_pyramid, cascade: CascadeFn | None = None) -> list[np.ndarray]:
    """Run the cascade on a batch (N, H, W, 3) of equal-size frames; returns per frame an (n, 5) array of box + prob.

    ``cascade``: a ``Cascade`` (eager, built here when None) or ``scripted_cascade``'s.
    """
    device = mtcnn.device
    imgs = torch.as_tensor(imgs, device=device)
    if imgs.ndim == 3:
        imgs = imgs.unsqueeze(0)
    imgs = imgs.permute(0, 3, 1, 2).float()
    batch_size = len(imgs)
    h, w = imgs.shape[2:4]
    m = 12.0 / mtcnn.min_face_size
    minl = min(h, w) * m
    scales = []
    scale_i = m
    while minl >= 12:
        scales.append(scale_i)
        scale_i *= mtcnn.factor
        minl *= mtcnn.factor

    out = pyramid(mtcnn.pnet, imgs, scales)
    run = cascade if cascade is not None else Cascade(mtcnn.rnet, mtcnn.onet, mtcnn.thresholds)
    boxes, image_inds = run(imgs, out.cells())
    if len(boxes) > 0:  # facenet's final NMS, on the host
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes_np = boxes.cpu().numpy()
    inds_np = image_inds.cpu().numpy()
    return [boxes_np[inds_np == i] for i in range(batch_size)]


def detect_fast(mtcnn: MTCNN, imgs: torch.Tensor | np.ndarray, pyramid: PyramidFn = pnet_pyramid, cascade: CascadeFn | None = None) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Same return shape as ``MTCNN.detect(imgs, landmarks=False)`` (largest face first)."""
    with torch.no_grad():
        per_frame = detect_faces_fast(mtcnn, torch.as_tensor(imgs), pyramid, cascade)
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
