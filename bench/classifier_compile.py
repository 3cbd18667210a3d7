"""Would a compiler speed up the classifier? B7 eager vs CUDA graphs of the eager model vs ``torch.compile`` (inductor) alone.

The classifier is most of the GPU's time at 150 streams (README Capacity), so its per-crop cost decides
how many streams a GPU holds. One batch size, fp16, channels_last, random weights (same compute as the
published ones). Prints a table and writes JSON. Needs CUDA (and triton for the compiled row).

    python bench/classifier_compile.py --batch 64 --out out/classifier-compile.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import write_results  # noqa: E402

from detector.classifier import DeepFakeClassifier  # noqa: E402
from detector.cuda_graphs import GraphedModel  # noqa: E402


def time_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Mean milliseconds a call, after three warm-up calls."""
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - start) / repeats, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tf_efficientnet_b7.ns_jft_in1k")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "classifier-compile.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = DeepFakeClassifier(args.encoder).eval().to(device).half().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 380, 380, device=device).half().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(x).float()
    rows: list[dict[str, object]] = [
        {"arrangement": "eager", "ms": time_ms(model, x, args.repeats)},
        {"arrangement": "CUDA graphs (shipped)", "ms": time_ms(GraphedModel(model, 380, torch.float16, True, (args.batch,), device), x, args.repeats)},
    ]
    start = time.perf_counter()
    compiled = torch.compile(model, mode=args.mode)
    with torch.inference_mode():
        logits = compiled(x).float()
    torch.cuda.synchronize()
    rows.append(
        {
            "arrangement": f"torch.compile ({args.mode})",
            "ms": time_ms(compiled, x, args.repeats),
            "compile_s": round(time.perf_counter() - start, 1),
            "max_abs_logit_diff_vs_eager": float((logits - reference).abs().max()),
        }
    )
    print(f"{'arrangement':34s} {'ms/batch':>9s} {'ms/crop':>8s}")
    for row in rows:
        print(f"{row['arrangement']!s:34s} {row['ms']!s:>9s} {float(row['ms']) / args.batch:>8.3f}")  # type: ignore[arg-type]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "encoder": args.encoder, "batch": args.batch, "dtype": "float16, channels_last"}
    write_results(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
