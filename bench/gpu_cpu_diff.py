"""Score difference between the GPU path and the CPU (parity) path, per video, with one checkpoint.

The same 32 evenly spaced frames of each clip go through one engine twice: as host arrays (the
winner's way: PIL shrink before MTCNN, OpenCV crops and resizes on the CPU) and as CUDA tensors
(as NVDEC hands them over: shrink, crops, resizes and normalisation on the GPU). Reports per
video the confident-strategy score of each path, |diff|, the largest per-face |diff| and how many
faces each path found. Needs a CUDA GPU.

    python bench/gpu_cpu_diff.py --clips ../shared/media/clips --out bench/results/gpu-cpu-diff.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.aggregation import confident_strategy  # noqa: E402
from detector.classifier import Ensemble  # noqa: E402
from detector.engine import FrameResult, InferenceEngine  # noqa: E402
from detector.faces import FaceDetector  # noqa: E402
from detector.model_choice import embedded_choice  # noqa: E402
from detector.video import VideoReadError, read_evenly_spaced_frames  # noqa: E402


def video_score(results: list[FrameResult], frames: int) -> tuple[float | None, list[float]]:
    scores = [face.score for r in results for face in r.faces][: 4 * frames - 1]
    return (float(confident_strategy(np.asarray(scores))) if scores else None), scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "media" / "clips")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-cpu-diff.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    choice = embedded_choice()
    assert choice is not None, "the embedded checkpoint is missing"
    device = torch.device("cuda")
    ensemble = Ensemble.from_checkpoints(choice.paths, choice.encoder, device, label=choice.label)
    detector = FaceDetector(device, fast_mtcnn=True, gpu_resize=False)  # host frames: PIL shrink, as the winner
    engine = InferenceEngine(detector, ensemble, input_size=choice.input_size, max_wait_ms=0, max_pending_per_stream=10_000)
    rows = []
    print(f"{'clip':48s} {'faces cpu/gpu':>13s} {'cpu':>8s} {'gpu':>8s} {'|diff|':>8s} {'face max|d|':>11s}")
    try:
        for clip in sorted(args.clips.glob("*.mp4")):
            try:
                frames = read_evenly_spaced_frames(clip, args.frames).frames
            except VideoReadError as exc:
                print(f"{clip.name}: {exc}")
                continue
            t0 = time.perf_counter()
            host = [f.result(timeout=600) for f in [engine.submit("cpu", frame) for frame in frames]]
            gpu = [f.result(timeout=600) for f in [engine.submit("gpu", torch.from_numpy(frame).to(device)) for frame in frames]]
            cpu_score, cpu_faces = video_score(host, len(frames))
            gpu_score, gpu_faces = video_score(gpu, len(frames))
            same_faces = len(cpu_faces) == len(gpu_faces)
            face_diff = float(np.max(np.abs(np.subtract(cpu_faces, gpu_faces)))) if same_faces and cpu_faces else None
            diff = abs(cpu_score - gpu_score) if cpu_score is not None and gpu_score is not None else None
            rows.append(
                {
                    "clip": clip.name,
                    "frames": len(frames),
                    "faces_cpu": len(cpu_faces),
                    "faces_gpu": len(gpu_faces),
                    "score_cpu": cpu_score,
                    "score_gpu": gpu_score,
                    "score_abs_diff": diff,
                    "face_max_abs_diff": face_diff,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8s}"  # noqa: E731
            print(f"{clip.name:48s} {len(cpu_faces):6d}/{len(gpu_faces):<6d} {fmt(cpu_score)} {fmt(gpu_score)} {fmt(diff)} {fmt(face_diff):>11s}", flush=True)
    finally:
        engine.close()
    diffs = [r["score_abs_diff"] for r in rows if r["score_abs_diff"] is not None]
    summary = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "model": choice.label,
        "clips": len(rows),
        "same_face_count": sum(r["faces_cpu"] == r["faces_gpu"] for r in rows),
        "max_video_abs_diff": max(diffs, default=None),
        "mean_video_abs_diff": float(np.mean(diffs)) if diffs else None,
        "max_face_abs_diff": max((r["face_max_abs_diff"] for r in rows if r["face_max_abs_diff"] is not None), default=None),
    }
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
