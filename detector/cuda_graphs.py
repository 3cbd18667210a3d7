"""CUDA graphs for the classifier at fixed batch sizes, and for MTCNN's P-Net pyramid.

A B7 forward launches hundreds of small kernels; at small batches the launch
overhead, not the math, sets the latency.  A captured graph replays them all
with one launch.  Batches are padded up to the next captured size (samples
are independent in eval mode, so padding does not change real outputs).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import nn

from detector.fast_mtcnn import Pyramid, pnet_pyramid

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


def smallest_fitting(sizes: Sequence[int], n: int) -> int | None:
    """The smallest captured batch size (``sizes`` ascending) that holds ``n``; None if none does."""
    return next((size for size in sizes if size >= n), None)


LAUNCH_COST_SLOTS = 4
"""A replay's fixed cost in padded samples' worth of B7 time: on an H100, 32 crops took 30.5 ms, 64 took 58.0 and
64 + 8 took 67.8 (``bench/results/h100-engine-scripted.json``): ~0.86 ms a sample and ~3 ms a replay."""


@functools.lru_cache(maxsize=1024)
def chunk_plan(sizes: tuple[int, ...], n: int, launch_cost: int = LAUNCH_COST_SLOTS) -> tuple[int, ...]:
    """The captured sizes whose replays hold ``n`` samples at the least cost (slots + ``launch_cost`` a replay), largest first.

    Padding 33 crops to a graph of 64 computes 31 for nothing; 32 + 1 costs one more replay. Sizes ascend.
    """
    best: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    for m in range(1, n + 1):
        best.append(min((launch_cost + size + best[max(m - size, 0)][0], (size, *best[max(m - size, 0)][1])) for size in sizes))
    return tuple(sorted(best[n][1], reverse=True))


class GraphedModel:
    """A model's forward captured per batch size; ``pool`` may be shared by the models of one ensemble
    (they replay one at a time on one stream and their outputs are copied out at once)."""

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        input_size: int,
        dtype: torch.dtype,
        channels_last: bool,
        sizes: tuple[int, ...] = DEFAULT_SIZES,
        device: torch.device | None = None,
        pool: tuple[int, int] | None = None,
    ) -> None:
        self.model = model
        self.sizes = tuple(sorted(sizes))
        if device is None and not isinstance(model, nn.Module):
            raise ValueError("a compiled forward has no parameters to tell its device: pass device")
        self.device = device or next(model.parameters()).device  # type: ignore[union-attr]
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._inputs: dict[int, torch.Tensor] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        with torch.inference_mode(), torch.cuda.device(self.device):  # capture on the model's GPU, not the current one
            for size in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
                static_in = torch.zeros(size, 3, input_size, input_size, dtype=dtype, device=self.device).contiguous(memory_format=memory_format)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        model(static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # a capture stream of this GPU: torch.cuda.graph's default one is made once, on whichever
                # GPU captured first, and capturing cuda:1's kernels on cuda:0's stream fails;
                # thread_local: another engine's threads (another GPU) may use CUDA while this one captures
                with torch.cuda.graph(graph, pool=pool, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
                    static_out = model(static_in)
                self._inputs[size], self._outputs[size], self._graphs[size] = static_in, static_out, graph
        torch.cuda.synchronize(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        start = 0
        for size in chunk_plan(self.sizes, x.shape[0]):
            chunk = x[start : start + size]
            static_in = self._inputs[size]
            static_in[: chunk.shape[0]].copy_(chunk)
            self._graphs[size].replay()
            outputs.append(self._outputs[size][: chunk.shape[0]].clone())
            start += chunk.shape[0]
        return torch.cat(outputs)


MAX_PYRAMID_GRAPHS = 16  # per detection thread: every batch size of two frame sizes, and some
_CAPTURE_LOCK = threading.Lock()  # one capture at a time in the process


@dataclass
class _CapturedPyramid:
    static_in: torch.Tensor  # (bucket, 3, H, W) float32
    frames: torch.Tensor  # 0-dim int64: how many leading frames of static_in are real
    cell_frame: torch.Tensor  # (C,) the frame of each cell, read by the graph
    output: Pyramid
    graph: torch.cuda.CUDAGraph


class PyramidGraphs:
    """MTCNN's P-Net pyramid (``pnet_pyramid``) captured per (padded batch size, frame size, scales).

    Eager, the pyramid is ~350 small launches a batch, each a Python call that takes and releases the
    GIL: beside other busy threads (the service's event loop, decoder pool readers, a second
    detection thread) every release can cost a wait for the GIL, and detection slowed 7x under
    load (measured on an H200). A replay is one call. A batch is padded up to the next captured
    size; padded frames' cells get probability -1 inside the graph, so they never pass a threshold.

    Graphs are per thread: a graph's outputs are static buffers, and two detection threads replaying
    one graph on two CUDA streams would overwrite each other's. Each thread captures what it needs
    on first use (about 0.1 s each) into its own memory pool, one capture at a time in the process;
    a capture CUDA refuses leaves that size eager, with a warning. A thread keeps its
    ``max_graphs`` most recently used graphs: frame sizes come and go (a WebRTC sender adapts its
    resolution; a scan meets every size of its videos), and a 1080p graph of 32 frames holds ~0.3 GB.
    """

    def __init__(self, sizes: tuple[int, ...] = DEFAULT_SIZES, max_graphs: int = MAX_PYRAMID_GRAPHS) -> None:
        self.sizes = tuple(sorted(sizes))
        self.max_graphs = max_graphs
        self._local = threading.local()

    def __call__(self, pnet: nn.Module, imgs: torch.Tensor, scales: Sequence[float]) -> Pyramid:
        bucket = smallest_fitting(self.sizes, imgs.shape[0])
        if imgs.device.type != "cuda" or bucket is None:
            return pnet_pyramid(pnet, imgs, scales)
        captured: LruCache[tuple[object, ...], _CapturedPyramid | None] | None = getattr(self._local, "graphs", None)
        if captured is None:
            captured = self._local.graphs = LruCache(self.max_graphs)
        layout = _layout(imgs)
        key = (id(pnet), bucket, tuple(imgs.shape[1:]), layout, tuple(scales), imgs.device)
        found, entry = captured.get(key)
        if not found:
            entry = self._capture(pnet, bucket, imgs, layout, scales)
            captured.put(key, entry)
        if entry is None:  # its capture failed: eager for good
            return pnet_pyramid(pnet, imgs, scales)
        entry.static_in[: imgs.shape[0]].copy_(imgs)
        entry.frames.fill_(imgs.shape[0])
        entry.graph.replay()
        return entry.output

    def _capture(self, pnet: nn.Module, bucket: int, imgs: torch.Tensor, layout: torch.memory_format, scales: Sequence[float]) -> _CapturedPyramid | None:
        """Capture one graph; None (with a warning) if CUDA refuses, and the caller stays eager.

        Not ``torch.cuda.graph``: its entry synchronises the whole device, which fails (and breaks
        the capture) while another thread captures. Captures here take turns (``_CAPTURE_LOCK``),
        with Python's garbage collector held off so no tensor is freed into the capture.
        """
        device = imgs.device
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = torch.cuda.graph_pool_handle()
        # the caller's memory layout, so cuDNN runs the kernels it runs eagerly: the same values
        static_in = torch.zeros((bucket, *imgs.shape[1:]), dtype=imgs.dtype, device=device).contiguous(memory_format=layout)
        frames = torch.full((), bucket, dtype=torch.int64, device=device)
        cell_frame = _cell_frames(pnet_pyramid(pnet, static_in, scales).shapes, device)

        def run() -> Pyramid:
            out = pnet_pyramid(pnet, static_in, scales)
            return dataclasses.replace(out, probs=torch.where(cell_frame < frames, out.probs, -1.0))

        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN picks its algorithms outside the capture
                run()
        current.wait_stream(side)
        side.synchronize()
        graph = torch.cuda.CUDAGraph()
        gc_was_on = gc.isenabled()
        with _CAPTURE_LOCK:
            gc.disable()
            try:
                with torch.cuda.stream(side):
                    # thread_local: the engine's other threads keep using CUDA while this one captures
                    graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                    try:
                        output = run()
                    finally:
                        graph.capture_end()
            except Exception as exc:  # noqa: BLE001 - any refusal leaves this size eager, nothing more
                log.warning("P-Net graph capture for %d frames of %s failed (%s); that batch size stays eager", bucket, tuple(imgs.shape[2:]), exc)
                return None
            finally:
                if gc_was_on:
                    gc.enable()
        # every tensor the graph reads is kept with it: freed, its memory would be handed to other tensors
        return _CapturedPyramid(static_in, frames, cell_frame, output, graph)


class LruCache(Generic[K, V]):
    """At most ``limit`` entries; the least recently used one goes first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an LRU cache needs room for at least one entry, got {limit}")
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        """(found, value): a value may itself be None."""
        if key not in self._entries:
            return False, None
        self._entries.move_to_end(key)
        return True, self._entries[key]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def keys(self) -> list[K]:
        return list(self._entries)


def _layout(imgs: torch.Tensor) -> torch.memory_format:
    """channels_last for a (N, C, H, W) view of NHWC frames (what ``detect_faces_fast`` hands over), else contiguous."""
    return torch.channels_last if imgs.is_contiguous(memory_format=torch.channels_last) and not imgs.is_contiguous() else torch.contiguous_format


def _cell_frames(shapes: Sequence[tuple[int, int, int]], device: torch.device) -> torch.Tensor:
    """The frame of every flattened pyramid cell (scale by scale, then frame, row, column)."""
    return torch.cat([torch.arange(n, device=device).repeat_interleave(rows * cols) for n, rows, cols in shapes])
