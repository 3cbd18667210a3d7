"""The inference engine alone under paced load: no decoders, no service, frames already on the device.

Decoded 1080p frames of the bench clips are submitted round robin over N stream names at R frames/s
(150 cameras at 2 samples/s = 300/s), as NVDEC would hand them over. What comes back: frames scored
per second, samples dropped, p50/p99 submit-to-score latency, and detection/classification time per
batch. Variants tell apart what slows detection under load: a GIL switch interval, detection's CUDA
streams at normal priority (the engine gives them the highest), one detection thread, a pure-Python
"GIL hog" thread beside the engine (the service's event loop and decoder-pool readers are such
threads), and the MTCNN cascade and crop resampling run eagerly ("unscripted") instead of as
TorchScript calls. An offline row submits 384
frames at once. Needs CUDA for meaningful numbers (runs on the CPU with numpy frames, slowly).

    python bench/engine_load.py --out out/engine-load.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import DEFAULT_CLIPS, make_ensemble, write_results  # noqa: E402

from detector import engine as engine_module  # noqa: E402
from detector import gpu_preprocessing  # noqa: E402
from detector.classifier import Ensemble  # noqa: E402
from detector.config import EngineConfig  # noqa: E402
from detector.engine import FrameResult, InferenceEngine  # noqa: E402
from detector.faces import FaceDetector  # noqa: E402
from detector.video import read_evenly_spaced_frames  # noqa: E402

VARIANTS = (
    "offline",
    "paced",
    "switch-0.5ms",
    "detect-normal-priority",
    "one-detect-thread",
    "gil-hog",
    "switch-0.5ms+gil-hog",
    "unscripted",
    "unscripted+gil-hog",
)


def _gil_hog(stop: threading.Event) -> None:
    """Pure Python that never blocks: holds the GIL for whole switch intervals."""
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i


def run_variant(variant: str, frames: list[Any], detectors: dict[bool, FaceDetector], ensemble: Ensemble, args: argparse.Namespace) -> dict[str, object]:
    scripted = "unscripted" not in variant
    detector = detectors[scripted]
    original_resample = gpu_preprocessing.scripted_resample  # noqa: SLF001 - the experiment swaps the crops' resampling
    if not scripted:
        gpu_preprocessing.scripted_resample = lambda: gpu_preprocessing._resample  # type: ignore[method-assign]  # noqa: SLF001 - the eager resampling
    sys.setswitchinterval(0.0005 if "switch" in variant else 0.005)
    original_priority = engine_module.DETECTION_STREAM_PRIORITY
    if variant == "detect-normal-priority":
        engine_module.DETECTION_STREAM_PRIORITY = 0  # the detection threads read it when they start
    workers = 1 if variant == "one-detect-thread" else args.detect_workers
    engine = InferenceEngine(detector, ensemble, max_batch=args.max_batch, max_wait_ms=20, max_pending_per_stream=2, detect_workers=workers)
    stop = threading.Event()
    hogs = [threading.Thread(target=_gil_hog, args=(stop,), daemon=True) for _ in range(1 if "gil-hog" in variant else 0)]
    for hog in hogs:
        hog.start()
    row: dict[str, object] = {"variant": variant, "detect_workers": workers, "switch_interval_ms": round(sys.getswitchinterval() * 1000, 3), "scripted": scripted}
    try:
        for future in [engine.submit(f"warm-{i}", frames[i % len(frames)]) for i in range(args.max_batch)]:
            future.result()
        if variant == "offline":
            start = time.perf_counter()
            futures = [engine.submit(f"offline-{i}", frames[i % len(frames)]) for i in range(384)]
            for future in futures:
                future.result()
            row["frames_per_s"] = round(384 / (time.perf_counter() - start), 1)
            return row
        row.update(_paced(engine, frames, args))
        return row
    finally:
        stop.set()
        engine.close()
        engine_module.DETECTION_STREAM_PRIORITY = original_priority
        gpu_preprocessing.scripted_resample = original_resample  # type: ignore[method-assign]
        sys.setswitchinterval(0.005)


def _paced(engine: InferenceEngine, frames: list[Any], args: argparse.Namespace) -> dict[str, object]:
    """Submit at args.rate for warm-up + duration seconds; measure the duration's samples."""
    futures: list[Future[FrameResult]] = []
    total = int(args.rate * (args.warmup + args.duration))
    first_measured = int(args.rate * args.warmup)
    start = time.perf_counter()
    before = None
    for k in range(total):
        delay = start + k / args.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if k == first_measured:
            before = (engine.stats.batches, engine.stats.frames, engine.stats.detect_s, engine.stats.classify_s)
        future = engine.submit(f"s{k % args.streams}", frames[k % len(frames)])
        if k >= first_measured:
            futures.append(future)
    wait(futures, timeout=120)
    latencies, dropped = [], 0
    for future in futures:
        try:
            latencies.append(future.result(timeout=0).latency_s * 1000)
        except Exception:  # noqa: BLE001 - dropped (engine behind) or not done in time: both count as lost
            dropped += 1
    assert before is not None
    batches = max(engine.stats.batches - before[0], 1)
    return {
        "rate": args.rate,
        "streams": args.streams,
        "submitted": len(futures),
        "dropped": dropped,
        "scored_per_s": round(len(latencies) / args.duration, 1),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "mean_batch_frames": round((engine.stats.frames - before[1]) / batches, 1),
        "detect_ms_per_batch": round(1000 * (engine.stats.detect_s - before[2]) / batches, 1),
        "classify_ms_per_batch": round(1000 * (engine.stats.classify_s - before[3]) / batches, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "media" / "clips")
    parser.add_argument("--clip-names", nargs="+", default=DEFAULT_CLIPS)
    parser.add_argument("--frames-per-clip", type=int, default=32)
    parser.add_argument("--encoder", default="tf_efficientnet_b7.ns_jft_in1k")
    parser.add_argument("--rate", type=float, default=300.0, help="frames submitted per second (streams x samples/s)")
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--detect-workers", type=int, default=EngineConfig().detect_workers, help="engine detection threads (the shipped default)")
    parser.add_argument("--no-graphs", action="store_true", help="no CUDA graphs (eager classifier and P-Net pyramid)")
    parser.add_argument("--compile", action="store_true", help="compile the classifier first (detector.compile_classifier, as config.yaml ships)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "engine-load.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graphs = device.type == "cuda" and not args.no_graphs
    frames: list[Any] = []
    for name in args.clip_names:
        decoded = read_evenly_spaced_frames(args.clips / name, args.frames_per_clip).frames
        frames += [torch.from_numpy(f).to(device) for f in decoded] if device.type == "cuda" else decoded
    ensemble = make_ensemble(args.encoder, 1, device, graphs, 380, compiled=args.compile and device.type == "cuda")
    detectors = {script: FaceDetector(device, rescale="size", gpu_resize=True, fast_mtcnn=True, pnet_graphs=graphs, scripted=script) for script in (True, False)}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "encoder": args.encoder,
        "cuda_graphs": graphs,
        "compiled": ensemble.compiled,
        "clips": args.clip_names,
        "frames": len(frames),
    }
    print(json.dumps(meta))
    rows = []
    print(f"{'variant':22s} {'scored/s':>9s} {'dropped':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'detect ms':>10s} {'classify ms':>12s}")
    for variant in args.variants:
        row = run_variant(variant, frames, detectors, ensemble, args)
        rows.append(row)
        if variant == "offline":
            print(f"{variant:22s} {row['frames_per_s']:>9} (all frames at once)", flush=True)
        else:
            print(
                f"{variant:22s} {row['scored_per_s']:>9} {row['dropped']:>8} {row['latency_p50_ms']!s:>8} {row['latency_p99_ms']!s:>8} "
                f"{row['mean_batch_frames']:>6} {row['detect_ms_per_batch']:>10} {row['classify_ms_per_batch']:>12}",
                flush=True,
            )
    write_results(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
