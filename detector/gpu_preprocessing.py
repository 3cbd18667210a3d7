"""The CPU preprocessing, done where decoded frames already are: on the GPU, with no trip to the host.

Pure torch and device-agnostic (tested on CPU tensors).  Each step reproduces the arithmetic of the
library the CPU path calls, not just its formula, so the classifier sees (nearly always) the same bytes:

- ``nv12_to_rgb``: FFmpeg swscale's x86 SIMD YUV->RGB (what PyAV's ``to_ndarray(format="rgb24")``
  runs on usual yuv420p video), bit-exact on that path.
- ``prepare_crops`` / ``crops_to_batch``: ``crop_with_margin`` + ``isotropically_resize_image`` +
  ``put_to_center`` (+ ``normalize_batch``).  INTER_AREA is OpenCV's own float32 algorithm, replayed
  in its order of operations: identical bytes.  INTER_CUBIC is what OpenCV hands to Intel IPP for
  uint8 (a float Keys a=-0.75 cubic), replayed in float32: one level off on ~5e-6 of values, where
  IPP's unpublished order of float operations rounds a value within ~1e-5 of a half the other way.
- ``shrink_for_detection``: the PIL-like antialiased bicubic shrink before MTCNN (not bit-exact).

Crop geometry (which boxes, which sizes) is computed on the host from the boxes MTCNN returns there;
only small index and weight tables cross to the device, never pixels.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from detector.preprocessing import isotropic_shape, margin_bounds, normalize_batch
from detector.scripting import compile_or_eager, wants_script

Frames = torch.Tensor | Sequence[torch.Tensor]
"""RGB uint8 HWC frames on one device: a (N, H, W, 3) tensor or a sequence of (H, W, 3) tensors (sizes may differ)."""
Boxes = np.ndarray | torch.Tensor | Sequence[Sequence[int]]
"""Integer full-resolution boxes (K, 4): xmin, ymin, xmax, ymax."""
FrameIndex = np.ndarray | torch.Tensor | Sequence[int]
"""(K,): the frame each box is in."""

_CHUNK = 1 << 21  # values per resampling step (~100 MB of float32 temporaries): bounds memory for any batch

# swscale's 16-bit fixed-point BT.601 limited-range coefficients (ff_yuv2rgb_c_init_tables: cy = 65536*255/219
# and the ITU-601 inverse table, each scaled by 2^13 and rounded), as its x86 yuv420->rgb24 code uses them.
_SWS_Y_COEFF, _SWS_Y_OFFSET = 9539, 128
_SWS_V2R, _SWS_U2G, _SWS_V2G, _SWS_U2B = 13075, -3209, -6660, 16525


def nv12_to_rgb(nv12: torch.Tensor) -> torch.Tensor:
    """NV12 (uint8 (H*3//2, W): Y plane, then interleaved U,V at half resolution) -> RGB uint8 (H, W, 3).

    Also a batch: (N, H*3//2, W) -> (N, H, W, 3).  BT.601 limited range with each chroma sample
    covering its 2x2 luma block, in swscale's x86 SIMD integer arithmetic (``pmulhw`` on values
    shifted left by 3, a floor per term, saturation): bit-exact with PyAV's ``to_ndarray("rgb24")``
    on x86 hosts.  swscale's C fallback (other CPUs) rounds differently, by up to 3 levels.
    """
    if nv12.dtype != torch.uint8 or nv12.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H*3//2, W) or (N, H*3//2, W) NV12, got {nv12.dtype} {tuple(nv12.shape)}")
    batch = nv12 if nv12.ndim == 3 else nv12.unsqueeze(0)
    n, rows, width = batch.shape
    if rows % 3 or width % 2:
        raise ValueError(f"NV12 needs an even height and width, got {rows} rows of {width}")
    height = rows // 3 * 2
    rgb = nv12_planes_to_rgb(batch[:, :height], batch[:, height:].reshape(n, height // 2, width // 2, 2))
    return rgb if nv12.ndim == 3 else rgb[0]


def nv12_planes_to_rgb(y: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """NV12 as two planes (FFmpeg's CUDA frames export them apart, with row padding) -> RGB uint8.

    ``y`` (N, H, W) or (H, W) uint8, ``uv`` (N, H/2, W/2, 2) or (H/2, W/2, 2); any strides. The
    arithmetic of ``nv12_to_rgb`` (bit-exact with swscale on x86).
    """
    single = y.ndim == 2
    if single:
        y, uv = y.unsqueeze(0), uv.unsqueeze(0)
    n, height, width = y.shape
    if height % 2 or width % 2 or tuple(uv.shape) != (n, height // 2, width // 2, 2):
        raise ValueError(f"NV12 planes need an even size and a half-size chroma plane, got {tuple(y.shape)} and {tuple(uv.shape)}")
    y, uv = y.to(torch.int32), uv.to(torch.int32)
    u, v = uv[..., 0] * 8 - 1024, uv[..., 1] * 8 - 1024  # (U - 128) << 3
    luma = ((y * 8 - _SWS_Y_OFFSET) * _SWS_Y_COEFF) >> 16  # >> on int32 floors, as pmulhw does
    chroma = torch.stack([(v * _SWS_V2R) >> 16, ((u * _SWS_U2G) >> 16) + ((v * _SWS_V2G) >> 16), (u * _SWS_U2B) >> 16], dim=-1)
    # Each chroma sample is added to its 2x2 block of luma by broadcasting, without upsampling it.
    rgb = luma.to(torch.int16).view(n, height // 2, 2, width // 2, 2, 1) + chroma.to(torch.int16).view(n, height // 2, 1, width // 2, 1, 3)
    rgb = rgb.clamp_(0, 255).to(torch.uint8).view(n, height, width, 3)
    return rgb[0] if single else rgb


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


def margin_crops(frames: Frames, boxes: Boxes, frame_index: FrameIndex) -> list[torch.Tensor]:
    """The un-resized uint8 HWC margin crops (as ``crop_with_margin``), as views of the frames on their device.

    For alert snapshots: copying them to the host is the caller's choice.
    """
    frame_list = _frame_list(frames)
    box_list = _boxes(boxes)
    crops = []
    for box, f in zip(box_list, _indices(frame_index, len(box_list)), strict=True):
        top, bottom, left, right = margin_bounds(box, *frame_list[f].shape[:2])
        crops.append(frame_list[f][top:bottom, left:right])
    return crops


def prepare_crops(frames: Frames, boxes: Boxes, frame_index: FrameIndex, input_size: int, scripted: bool | None = None) -> torch.Tensor:
    """Margin crop, isotropic resize and centring of every box: uint8 (K, input_size, input_size, 3) on the frames' device.

    ``stack_crops([crop_with_margin(frame, box) ...], input_size)``, computed on the device.  ``boxes`` (K, 4)
    are integer full-resolution (xmin, ymin, xmax, ymax), ``frame_index`` (K,) says which frame each is in;
    both are read on the host (their values decide the shapes).  A box whose margin crop is empty raises
    ``ValueError``, as ``isotropically_resize_image`` does.

    Every crop is resampled by two separable passes (columns, then rows, as OpenCV), all crops at once.
    A pass is, per tap, a gather and a multiply-add over the whole batch (a tap per source pixel an output
    touches: about ratio + 2 for INTER_AREA, 4 for cubic) rather than a dense (out x in) weight matmul,
    whose summation order (or TF32) is the BLAS library's and could not replay OpenCV's float32 sums.
    Memory: a float32 (source rows x input_size x 3) buffer, the uint8 output, and temporaries of a
    bounded step (``_CHUNK`` values).

    What is replayed is what the locked opencv-python (5.0, with IPP, on x86) does for uint8 RGB:

    - INTER_AREA (shrinking): exactly.  Its fractional box coverage weights in float32, each product
      rounded and summed in float32 in its order, rounded half to even; integer ratios take its
      ``resizeAreaFast`` block sums (2x2 rounds half up).
    - INTER_CUBIC (enlarging) from sources of 4 px and more, which OpenCV hands to Intel IPP: Keys
      a=-0.75 at half-pixel centres (double coordinates), borders replicated, in floating point.  IPP's
      order of float operations is unpublished, so a value within ~1e-5 of a half can round the other
      way: one level, on ~5e-6 of values (measured); bit-exactness is out of reach without IPP's code.
    - INTER_CUBIC from a source under 4 px (IPP declines it): OpenCV's own 11-bit fixed point.

    ``scripted``: resample in one TorchScript call (None: on CUDA, where the GIL is contended).
    """
    frame_list = _frame_list(frames)
    device = frame_list[0].device if frame_list else torch.device("cpu")
    box_list = _boxes(boxes)
    index_list = _indices(frame_index, len(box_list))
    if not box_list:
        return torch.zeros((0, input_size, input_size, 3), dtype=torch.uint8, device=device)
    pixels, pixel_base = _pixel_table(frames, frame_list, sorted(set(index_list)))
    plan = _plan(frame_list, pixel_base, box_list, index_list, input_size)
    t = _to_device(plan, device)
    none = torch.zeros((0,), dtype=torch.float32, device=device)
    resample = scripted_resample() if wants_script(scripted, device) else _resample
    return resample(
        pixels,
        t["crop_of_row"],
        t["row_base"],
        t["x_index"],
        t["x_weight"],
        t["y_index"],
        t["y_weight"],
        t.get("post_scale", none),
        t.get("post_bias", none),
        plan.post_scale is not None,
        input_size,
        _CHUNK,
    )


def crops_to_batch(
    frames: Frames,
    boxes: Boxes,
    frame_index: FrameIndex,
    input_size: int,
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """The classifier input (K, 3, input_size, input_size) for every box, on the frames' device.

    ``normalize_batch(stack_crops([crop_with_margin(frame, box) ...], input_size))`` without leaving the
    device: ``prepare_crops`` rounds to uint8 first (as OpenCV does), then ``normalize_batch`` itself.
    """
    prepared = prepare_crops(frames, boxes, frame_index, input_size)
    return normalize_batch(prepared, device=prepared.device, dtype=out_dtype, channels_last=channels_last)


# --- host-side planning -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Index and weight tables for a batch of crops, built on the host with NumPy."""

    crop_of_row: np.ndarray  # (R,) which crop each gathered source row belongs to
    row_base: np.ndarray  # (R,) pixel offset of the row's column 0 in the flattened frames
    x_index: np.ndarray  # (K, S, Tx) source column of each canvas column's taps
    x_weight: np.ndarray  # (K, S, Tx) float32
    y_index: np.ndarray  # (K, S, Ty) gathered row (0..R-1) of each canvas row's taps
    y_weight: np.ndarray  # (K, S, Ty) float32
    post_scale: np.ndarray | None  # (K,) float32: 1, or resizeAreaFast's 1/area; None when no crop takes that path
    post_bias: np.ndarray | None  # (K,) float32: 1/8 for resizeAreaFast's 2x2 (then half-even rounding rounds half up)


def _resample(
    pixels: torch.Tensor,
    crop_of_row: torch.Tensor,
    row_base: torch.Tensor,
    x_index: torch.Tensor,
    x_weight: torch.Tensor,
    y_index: torch.Tensor,
    y_weight: torch.Tensor,
    post_scale: torch.Tensor,
    post_bias: torch.Tensor,
    area_fast: bool,
    size: int,
    chunk: int,
) -> torch.Tensor:
    """Both resampling passes of ``prepare_crops`` over a plan's tables (written for TorchScript): uint8 (K, size, size, 3).

    Every tap is a gather and a product rounded to float32, added to the running sum in tap order:
    separate multiply and add kernels, never a fused multiply-add, as OpenCV's scalar loops compute.
    ``post_scale``/``post_bias`` apply when ``area_fast`` (resizeAreaFast's block sums).
    """
    device = pixels.device
    # Columns: every source row of every crop becomes ``size`` canvas columns.
    rows = torch.empty((crop_of_row.shape[0], size, 3), dtype=torch.float32, device=device)
    step = max(chunk // size, 1)
    for start in range(0, crop_of_row.shape[0], step):
        crop, base = crop_of_row[start : start + step], row_base[start : start + step, None]
        total = pixels[base + x_index[:, :, 0][crop]].float() * x_weight[:, :, 0][crop].unsqueeze(-1)
        for k in range(1, x_index.shape[2]):
            total = total.add_(pixels[base + x_index[:, :, k][crop]].float() * x_weight[:, :, k][crop].unsqueeze(-1))
        rows[start : start + step] = total
    # Rows: each crop's canvas rows from its resampled source rows; the canvas outside the image has weight 0.
    count = y_index.shape[0]
    out = torch.empty((count, size, size, 3), dtype=torch.uint8, device=device)
    step = max(chunk // (size * size), 1)
    for start in range(0, count, step):
        end = start + step
        total = rows[y_index[start:end, :, 0]].float() * y_weight[start:end, :, 0, None, None]
        for k in range(1, y_index.shape[2]):
            total = total.add_(rows[y_index[start:end, :, k]].float() * y_weight[start:end, :, k, None, None])
        if area_fast:  # resizeAreaFast: block sum * (1.f / area); 2x2 rounds half up (+ 1/8)
            total = total * post_scale[start:end].view(-1, 1, 1, 1) + post_bias[start:end].view(-1, 1, 1, 1)
        out[start:end] = total.round_().clamp_(0, 255).to(torch.uint8)  # round half to even: cvRound
    return out


@functools.cache
def scripted_resample() -> Callable[..., torch.Tensor]:
    """``_resample`` compiled once (``detector/scripting.py``): a GPU batch of crops is ~300 small calls."""
    return compile_or_eager(_resample, "GPU crop resampling")


def _frame_list(frames: Frames) -> list[torch.Tensor]:
    frame_list = list(frames.unbind(0)) if isinstance(frames, torch.Tensor) else list(frames)
    for i, frame in enumerate(frame_list):
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i}: expected uint8 HxWx3 RGB, got {frame.dtype} {tuple(frame.shape)}")
        if frame.device != frame_list[0].device:
            raise ValueError(f"frame {i} is on {frame.device}, frame 0 on {frame_list[0].device}")
    return frame_list


def _boxes(boxes: Boxes) -> list[tuple[int, int, int, int]]:
    array = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] != 4 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"boxes: expected integer (K, 4), got {array.dtype} {array.shape}")
    return [(int(row[0]), int(row[1]), int(row[2]), int(row[3])) for row in array]


def _indices(frame_index: FrameIndex, count: int) -> list[int]:
    array = frame_index.detach().cpu().numpy() if isinstance(frame_index, torch.Tensor) else np.asarray(frame_index)
    if array.shape != (count,):
        raise ValueError(f"frame_index: expected ({count},), got {array.shape}")
    return [int(i) for i in array]


def _plan(frames: list[torch.Tensor], pixel_base: dict[int, int], boxes: list[tuple[int, int, int, int]], frame_index: list[int], size: int) -> _Plan:
    crop_rows, row_bases, xs, ys, post_scale, post_bias = [], [], [], [], [], []
    first_row = 0
    for k, (box, f) in enumerate(zip(boxes, frame_index, strict=True)):
        frame_h, frame_w = frames[f].shape[:2]
        top, bottom, left, right = margin_bounds(box, frame_h, frame_w)
        h, w = bottom - top, right - left
        if h <= 0 or w <= 0:
            raise ValueError(f"box {k} {box}: empty margin crop in a {frame_w}x{frame_h} frame")
        new_h, new_w = isotropic_shape(h, w, size)
        if (new_h, new_w) == (h, w):
            kind = "copy"
        elif size > max(h, w):
            kind = "cubic" if min(h, w) >= 4 else "cubic_fixed"  # IPP declines sources under 4 px: OpenCV's own code
        else:
            kind = "area"
        step_x, step_y = (_area_fast_step(w, new_w), _area_fast_step(h, new_h)) if kind == "area" else (None, None)
        fast = step_x is not None and step_y is not None
        # resizeAreaFast sums whole blocks, then rounds sum * (1.f / area) half to even, but 2x2 as (sum + 2) >> 2:
        # sum / 4 + 1/8 is exact and rounds half to even exactly where (sum + 2) >> 2 rounds.
        post_scale.append(np.float32(1) / np.float32(step_x * step_y) if step_x is not None and step_y is not None else np.float32(1))
        post_bias.append(0.125 if step_x == 2 and step_y == 2 else 0.0)
        x_index, x_weight = _canvas_taps(w, new_w, size, kind, step_x if fast else None, vertical=False)
        y_index, y_weight = _canvas_taps(h, new_h, size, kind, step_y if fast else None, vertical=True)
        xs.append((x_index + left, x_weight))
        ys.append((y_index + first_row, y_weight))
        crop_rows.append(np.full(h, k, dtype=np.int64))
        row_bases.append(pixel_base[f] + (top + np.arange(h, dtype=np.int64)) * frame_w)
        first_row += h
    x_index, x_weight = _stack_taps(xs)
    y_index, y_weight = _stack_taps(ys)
    any_fast = any(v != 1 for v in post_scale)
    return _Plan(
        crop_of_row=np.concatenate(crop_rows),
        row_base=np.concatenate(row_bases),
        x_index=x_index,
        x_weight=x_weight,
        y_index=y_index,
        y_weight=y_weight,
        post_scale=np.asarray(post_scale, dtype=np.float32) if any_fast else None,
        post_bias=np.asarray(post_bias, dtype=np.float32) if any_fast else None,
    )


def _pixel_table(frames: Frames, frame_list: list[torch.Tensor], frames_used: list[int]) -> tuple[torch.Tensor, dict[int, int]]:
    """The used frames as one (P, 3) pixel table and each frame's first pixel in it.

    A contiguous (N, H, W, 3) batch or a single contiguous frame is viewed as is; otherwise the used frames are
    concatenated (one device copy).
    """
    for f in frames_used:
        if not 0 <= f < len(frame_list):
            raise ValueError(f"frame index {f} out of range for {len(frame_list)} frames")
    if isinstance(frames, torch.Tensor) and frames.is_contiguous():
        height, width = frames.shape[1:3]
        return frames.view(-1, 3), {f: f * height * width for f in frames_used}
    bases, base = {}, 0
    for f in frames_used:
        bases[f] = base
        base += frame_list[f].shape[0] * frame_list[f].shape[1]
    flat = [frame_list[f].reshape(-1, 3) for f in frames_used]
    return (flat[0] if len(flat) == 1 else torch.cat(flat)), bases


def _to_device(plan: _Plan, device: torch.device) -> dict[str, torch.Tensor]:
    """The plan's tables on ``device`` in two copies (one of integers, one of floats), viewed back into shape.

    On CUDA through pinned memory without blocking: a copy from pageable memory would wait for the stream.
    """
    groups = (("crop_of_row", "row_base", "x_index", "y_index"), ("x_weight", "y_weight", "post_scale", "post_bias"))
    tensors: dict[str, torch.Tensor] = {}
    for names in groups:
        arrays = {name: getattr(plan, name) for name in names if getattr(plan, name) is not None}
        host = torch.from_numpy(np.concatenate([array.ravel() for array in arrays.values()]))
        packed = host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)
        for (name, array), part in zip(arrays.items(), packed.split([array.size for array in arrays.values()]), strict=True):
            tensors[name] = part.view(array.shape)
    return tensors


def _area_fast_step(n_in: int, n_out: int) -> int | None:
    """The integer ratio if OpenCV's ``is_area_fast`` test holds on this axis (in its double arithmetic), else None."""
    scale = 1.0 / (n_out / n_in)
    step = round(scale)  # cvRound: half to even, as Python's round
    return step if abs(scale - step) < sys.float_info.epsilon else None


@functools.lru_cache(maxsize=4096)
def _canvas_taps(n_in: int, n_out: int, size: int, kind: str, fast_step: int | None, vertical: bool) -> tuple[np.ndarray, np.ndarray]:
    """(size, T) source indices and float32 weights of each canvas position: the resize placed by ``put_to_center``.

    Cached (read-only arrays): face sizes repeat from frame to frame, and this NumPy work holds the GIL
    in the detection threads.
    """
    if kind == "copy":
        index, weight = np.arange(n_out, dtype=np.int64)[:, None], np.ones((n_out, 1), dtype=np.float32)
    elif kind == "cubic":
        index, weight = _cubic_taps(n_in, n_out)
    elif kind == "cubic_fixed":
        index, weight = _fixed_cubic_taps(n_in, n_out, vertical)
    elif fast_step is not None:
        index = np.arange(n_out, dtype=np.int64)[:, None] * fast_step + np.arange(fast_step, dtype=np.int64)[None, :]
        weight = np.ones(index.shape, dtype=np.float32)
    else:
        index, weight = _area_taps(n_in, n_out, 1.0 / (n_out / n_in))
    start = (size - n_out) // 2
    canvas_index = np.zeros((size, index.shape[1]), dtype=np.int64)
    canvas_weight = np.zeros((size, index.shape[1]), dtype=np.float32)
    canvas_index[start : start + n_out] = index
    canvas_weight[start : start + n_out] = weight
    canvas_index.flags.writeable = canvas_weight.flags.writeable = False
    return canvas_index, canvas_weight


def _area_taps(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``computeResizeAreaTab``: per output, a partial first source pixel, whole ones, a partial last."""
    fsx1 = np.arange(n_out, dtype=np.float64) * scale
    fsx2 = fsx1 + scale
    cell = np.minimum(scale, n_in - fsx1)
    sx2 = np.minimum(np.floor(fsx2).astype(np.int64), n_in - 1)
    sx1 = np.minimum(np.ceil(fsx1).astype(np.int64), sx2)
    left = (sx1 - fsx1) > 1e-3
    right = (fsx2 - sx2) > 1e-3
    whole = sx2 - sx1
    count = left.astype(np.int64) + whole + right
    taps = int(count.max())
    j = np.arange(taps, dtype=np.int64)[None, :]
    position = j - left[:, None]  # -1: the partial first pixel; whole: the partial last
    index = np.clip(sx1[:, None] + position, 0, n_in - 1)
    left_weight = ((sx1 - fsx1) / cell).astype(np.float32)
    whole_weight = (1.0 / cell).astype(np.float32)
    right_weight = (np.minimum(np.minimum(fsx2 - sx2, 1.0), cell) / cell).astype(np.float32)
    weight = np.where(position < 0, left_weight[:, None], np.where(position < whole[:, None], whole_weight[:, None], right_weight[:, None]))
    weight = np.where(j < count[:, None], weight, np.float32(0)).astype(np.float32)
    return np.where(j < count[:, None], index, 0), weight


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys cubic (a = -0.75), half-pixel centres in double, borders replicated: IPP's resize as OpenCV configures it."""
    fx = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    sx = np.floor(fx)
    t = fx - sx
    distance = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)
    weight = _keys(distance).astype(np.float32)
    index = np.clip(sx.astype(np.int64)[:, None] - 1 + np.arange(4, dtype=np.int64)[None, :], 0, n_in - 1)
    return index, weight


def _fixed_cubic_taps(n_in: int, n_out: int, vertical: bool) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's own uint8 INTER_CUBIC: float32 coordinates and coefficients, rounded to 11-bit integers.

    Columns sum integer products exactly.  Rows replay its SIMD vertical pass: each integer coefficient
    times 2^-22 in float32, taps summed last to first (``b0*S0 + (b1*S1 + (b2*S2 + b3*S3))`` without
    fused multiply-adds), rounded half to even.  (The few values past its last full SIMD vector per row
    take its fixed-point tail, rounding exact halves up: they can differ where the float sum is a half.)
    """
    a = np.float32(-0.75)
    scale = 1.0 / (n_out / n_in)
    fx = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx)
    x = (fx - sx).astype(np.float32)
    one = np.float32(1)
    c0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (x + one) - np.float32(4) * a
    c1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
    c2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
    c3 = one - c0 - c1 - c2
    fixed = np.round(np.stack([c0, c1, c2, c3], axis=1).astype(np.float32) * np.float32(2048)).astype(np.float32)
    index = np.clip(sx.astype(np.int64)[:, None] - 1 + np.arange(4, dtype=np.int64)[None, :], 0, n_in - 1)
    if not vertical:
        return index, fixed
    return index[:, ::-1].copy(), (fixed[:, ::-1] * np.float32(2.0**-22)).astype(np.float32)


def _keys(distance: np.ndarray, a: float = -0.75) -> np.ndarray:
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _stack_taps(taps: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pad every crop's taps to the batch's widest with zero weights (adding +0 leaves a float sum unchanged).

    Padded taps repeat the last index (any in-range index would do). Filled in place: ``np.pad`` per crop
    cost ~0.2 ms each, held the GIL in the detection thread, and was most of the planning's time.
    """
    width = max(index.shape[1] for index, _ in taps)
    rows = taps[0][0].shape[0]
    indices = np.empty((len(taps), rows, width), dtype=np.int64)
    weights = np.zeros((len(taps), rows, width), dtype=np.float32)
    for k, (index, weight) in enumerate(taps):
        used = index.shape[1]
        indices[k, :, :used] = index
        indices[k, :, used:] = index[:, used - 1 : used]
        weights[k, :, :used] = weight
    return indices, weights


__all__ = ["crops_to_batch", "margin_crops", "nv12_to_rgb", "prepare_crops", "shrink_for_detection"]
