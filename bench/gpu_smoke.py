"""The shipped detector path on a GPU: builder, embedded model, CUDA graphs, GPU resize; CPU vs GPU scores; throughput.

For a lent GPU machine that has torch, timm and OpenCV but not the service's other packages
(carry the wheels of facenet-pytorch and pydantic).  Frames are JPEG files named ``fake_*`` and
``real_*`` (e.g. evenly spaced frames of a fake clip and of its original).  What it checks and
measures, written as JSON:

1. ``build_engine`` with no winner checkpoint picks the embedded model on CUDA with CUDA graphs,
   GPU resize and the batched MTCNN cascade, and scores every frame (faces found, fake vs real mean);
2. the same frames through the CPU path: per-frame score difference GPU vs CPU (fp16 + channels_last
   + GPU resize against fp32 + PIL resize);
3. throughput of the engine on the GPU (frames/s, faces/s) and of the classifier alone (faces/s).

    python3 bench/gpu_smoke.py --frames .device/frames --out "$OUT/gpu-smoke.json"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.build import build_engine  # noqa: E402
from detector.config import DetectorConfig, EngineConfig  # noqa: E402
from detector.engine import FrameResult, InferenceEngine  # noqa: E402


def load_frames(folder: Path) -> tuple[list[str], list[np.ndarray]]:
    paths = sorted(folder.glob("*.jpg"))
    return [p.stem for p in paths], [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def score_all(engine: InferenceEngine, frames: list[np.ndarray], stream: str = "smoke") -> list[FrameResult]:
    futures = [engine.submit(f"{stream}-{i}", frame) for i, frame in enumerate(frames)]  # one stream each: nothing dropped
    return [f.result(timeout=600) for f in futures]


def frame_scores(results: list[FrameResult]) -> list[float | None]:
    return [max((face.score for face in r.faces), default=None) for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=8, help="the frames this many times for the throughput runs")
    args = parser.parse_args()
    names, frames = load_frames(args.frames)
    result: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "frames": len(frames)}
    with tempfile.TemporaryDirectory() as empty:  # no winner checkpoint anywhere: the embedded model runs
        engine_cfg = EngineConfig(max_batch=32, max_wait_ms=20, max_pending_per_stream=4)
        gpu_cfg = DetectorConfig(weights_dir=Path(empty), device="cuda", cuda_graphs=True, gpu_resize=True, fast_mtcnn=True)
        cpu_cfg = DetectorConfig(weights_dir=Path(empty), device="cpu", fast_mtcnn=True)
        gpu = build_engine(gpu_cfg, engine_cfg)
        cpu = build_engine(cpu_cfg, engine_cfg)
    try:
        result["model"] = gpu.ensemble.label
        result["dtype"] = str(gpu.ensemble.dtype)
        score_all(gpu, frames[:4])  # warm-up (cuDNN autotune, graph replays)
        on_gpu, on_cpu = frame_scores(score_all(gpu, frames)), frame_scores(score_all(cpu, frames, "cpu"))
        pairs = [(g, c) for g, c in zip(on_gpu, on_cpu, strict=True) if g is not None and c is not None]
        result["faces_found"] = {"gpu": sum(s is not None for s in on_gpu), "cpu": sum(s is not None for s in on_cpu)}
        result["scores"] = {n: {"gpu": g, "cpu": c} for n, g, c in zip(names, on_gpu, on_cpu, strict=True)}
        result["gpu_vs_cpu_max_abs_diff"] = max(abs(g - c) for g, c in pairs) if pairs else None
        for kind in ("fake", "real"):
            values = [s for n, s in zip(names, on_gpu, strict=True) if n.startswith(kind) and s is not None]
            result[f"{kind}_mean_gpu"] = float(np.mean(values)) if values else None
        many = frames * args.repeat
        torch.cuda.synchronize()
        started = time.perf_counter()
        results = score_all(gpu, many, "tp")
        seconds = time.perf_counter() - started
        faces = sum(len(r.faces) for r in results)
        result["engine"] = {"frames": len(many), "seconds": round(seconds, 3), "frames_per_s": round(len(many) / seconds, 1), "faces_per_s": round(faces / seconds, 1)}
        x = torch.randn(64, 3, 256, 256, device="cuda", dtype=gpu.ensemble.dtype).contiguous(memory_format=torch.channels_last)
        for _ in range(5):
            gpu.ensemble.predict(x)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(50):
            gpu.ensemble.predict(x)
        torch.cuda.synchronize()
        result["classifier_faces_per_s_batch64"] = round(50 * 64 / (time.perf_counter() - started), 1)
    finally:
        gpu.close()
        cpu.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
