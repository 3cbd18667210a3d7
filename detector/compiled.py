"""The classifier through ``torch.compile`` (inductor): B7's batch norms, activations and squeeze-excite
gates fused around cuDNN's convolutions.

At 150 streams the classifier is most of the GPU's time (README Capacity). On an H100, B7 fp16 at 64
crops took 42.6 ms compiled against 57.5 ms replaying CUDA graphs of the eager model
(``bench/results/h100-engine-scripted.json``, run 34). The compiled forward is itself captured in CUDA
graphs afterwards (``detector/cuda_graphs.py``), so a batch is still one launch.

One compile serves every batch size, and every model of an ensemble (they share the architecture; the
weights are the graph's inputs): the batch dimension is marked dynamic from 2 up. (Dynamo
specialises sizes 0 and 1; a single crop is padded to a graph of 2 instead of costing a second compile.)
Inductor keeps its work on disk (``cache_dir``): on an H100, building a single compiled and graphed B7 took
82-97 s with an empty cache and 31-41 s with a warm one.
CUDA only; the CPU path is the winner's code, bit for bit, and is never compiled.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo as dynamo  # mark_dynamic and the recompile limit: torch.compile's documented knobs live here
from torch import nn

from detector.scripting import is_compiled  # one marker for both wrappers: ``fn.compiled``

log = logging.getLogger(__name__)

MIN_DYNAMIC_BATCH = 2
"""Smallest batch the compiled forward takes without compiling again (dynamo specialises 0 and 1)."""

Backend = str | Callable[..., object]


def use_compile_cache(cache_dir: Path) -> bool:
    """Point inductor's and triton's on-disk caches at ``cache_dir`` unless the environment already chose;
    False (with a warning) where it cannot be written: the compile still runs, only nothing is kept."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        log.warning("compile cache %s is not writable (%s): compiling without keeping the result for the next start", cache_dir, exc.strerror or exc)
        return False
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))
    return True


def compile_classifier(model: nn.Module, backend: Backend = "inductor") -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward compiled for batches of ``MIN_DYNAMIC_BATCH`` crops and more, the batch size a symbol
    (a batch of one compiles a second, specialised graph on first use). Compilation happens on the first call.

    Dynamo may still split the sizes where an op's kernel choice depends on them (on the CPU, convolutions
    change backend at 16 samples): ``GraphedModel``'s warm-up meets every captured size at start, so any
    such compile happens then, never in a live batch."""
    # the models of an ensemble share one forward's code: this torch reuses one compiled graph for them all
    # (parameters are graph inputs), but a torch that guarded on each module's identity would need a cache
    # entry per model, and dynamo's default limit (8) is about an ensemble's size
    limit_name = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo.config, limit_name, max(getattr(dynamo.config, limit_name), 64))
    compiled = torch.compile(model, backend=backend)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= MIN_DYNAMIC_BATCH:
            dynamo.mark_dynamic(x, 0)
        return compiled(x)

    run.compiled = compiled  # type: ignore[attr-defined]  # for tests and logs: proof it was compiled
    return run


def compile_or_keep(model: nn.Module, example: torch.Tensor, what: str, backend: Backend = "inductor") -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` compiled and run once on ``example`` (that call compiles), or ``model`` itself with a
    warning naming ``what`` where compiling fails (no triton, no compiler, an op inductor refuses)."""
    start = time.perf_counter()
    try:
        run = compile_classifier(model, backend)
        with torch.inference_mode():
            run(example)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the uncompiled model, which computes the same
        log.warning("%s runs uncompiled: torch.compile failed (%s)", what, _reason(exc))
        return model
    log.info("%s compiled in %.1f s (cache: %s)", what, time.perf_counter() - start, os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default"))
    return run


def _reason(exc: BaseException) -> str:
    """The root cause in a line: dynamo wraps a backend's error in its own ("backend='inductor' raised:")."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


__all__ = ["MIN_DYNAMIC_BATCH", "compile_classifier", "compile_or_keep", "is_compiled", "use_compile_cache"]
