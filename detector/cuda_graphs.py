"""CUDA graphs for the classifier at fixed batch sizes.

A B7 forward launches hundreds of small kernels; at small batches the launch
overhead, not the math, sets the latency.  A captured graph replays them all
with one launch.  Batches are padded up to the next captured size (samples
are independent in eval mode, so padding does not change real outputs).
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


class GraphedModel:
    """A model's forward captured per batch size; ``pool`` may be shared by the models of one ensemble
    (they replay one at a time on one stream and their outputs are copied out at once)."""

    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        dtype: torch.dtype,
        channels_last: bool,
        sizes: tuple[int, ...] = DEFAULT_SIZES,
        device: torch.device | None = None,
        pool: tuple[int, int] | None = None,
    ) -> None:
        self.model = model
        self.sizes = tuple(sorted(sizes))
        self.device = device or next(model.parameters()).device
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

    def _bucket(self, n: int) -> int:
        for size in self.sizes:
            if size >= n:
                return size
        return self.sizes[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, x.shape[0], self.sizes[-1]):
            chunk = x[start : start + self.sizes[-1]]
            size = self._bucket(chunk.shape[0])
            static_in = self._inputs[size]
            static_in[: chunk.shape[0]].copy_(chunk)
            self._graphs[size].replay()
            outputs.append(self._outputs[size][: chunk.shape[0]].clone())
        return torch.cat(outputs)
