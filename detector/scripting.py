"""TorchScript for the detection threads' many small torch calls: one GIL release a call, not one an op.

Eager PyTorch releases the GIL around every op and takes it back after. In the service the event
loop and the decoders' reader threads hold the GIL often, so each re-take can wait: measured on an
H200, that, not the GPU, bounded detection (``bench/results/h200-engine-gil-and-pnet-graphs.json``).
A scripted function runs all its ops in C++ and takes the GIL back once.

Calls run with graph optimisation off (a thread-local switch): no fuser rewrites the arithmetic, so a
scripted call launches the same kernels on the same shapes as the eager code and gives the same bits.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def compile_or_eager(code: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``code`` (a function or module written for TorchScript) compiled, or ``code`` itself with a warning
    naming ``what`` where this torch cannot compile it: both compute the same."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script is deprecated (FutureWarning); still the way to leave the GIL
            compiled = torch.jit.script(code)
    except Exception as exc:  # noqa: BLE001 - any failure to compile leaves the eager code, which computes the same
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s runs eagerly: TorchScript could not compile it (%s)", what, reason)
        return code

    def run(*args: Any) -> Any:
        with torch.jit.optimized_execution(False):
            return compiled(*args)

    run.compiled = compiled  # type: ignore[attr-defined]  # for tests: proof it was compiled
    return run


def wants_script(scripted: bool | None, device: torch.device) -> bool:
    """``scripted`` when given, else True on CUDA: there the decoders' and the event loop's threads compete
    for the GIL; the CPU (parity) path keeps the eager code."""
    return scripted if scripted is not None else device.type == "cuda"


def is_compiled(fn: Callable[..., Any]) -> bool:
    """Whether ``compile_or_eager`` (TorchScript) or ``detector.compiled.compile_or_keep`` (``torch.compile``)
    compiled ``fn``: both mark what they compiled with a ``compiled`` attribute (tests check that no fallback happened)."""
    return hasattr(fn, "compiled")


__all__ = ["compile_or_eager", "is_compiled", "wants_script"]
