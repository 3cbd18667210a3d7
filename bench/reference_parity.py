"""Side-by-side parity with the DFDC winner's inference code (``kernel_utils.py``).

Runs the winner's ``VideoReader`` + ``FaceExtractor`` + ``predict_on_video`` and
our ``read_evenly_spaced_frames`` + ``FaceDetector(rescale="half")`` +
``prepare_crop``/``normalize_batch`` + ``Ensemble`` on the same clips and
checkpoint, and compares frames, boxes, crops, classifier inputs and scores.

The reference code is not shipped here; point ``--reference`` at the
``kernel_utils.py`` of a checkout of github.com/selimsef/dfdc_deepfake_challenge.
Two shims let it import on today's stack: ``np.int`` (removed in NumPy 1.24)
and a stand-in for albumentations' ``image_compression`` (unused at inference).

    uv run python bench/reference_parity.py --reference PATH/kernel_utils.py \
        --clips ../shared/media/clips --out out/parity.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.aggregation import confident_strategy  # noqa: E402
from detector.classifier import DeepFakeClassifier, Ensemble, load_classifier, save_checkpoint  # noqa: E402
from detector.faces import FaceDetector  # noqa: E402
from detector.pipeline import VideoPredictor  # noqa: E402
from detector.preprocessing import normalize_batch, stack_crops  # noqa: E402
from detector.video import read_evenly_spaced_frames  # noqa: E402


def import_reference(path: Path) -> types.ModuleType:
    if not hasattr(np, "int"):
        np.int = int  # type: ignore[attr-defined]
    if "albumentations" not in sys.modules:
        alb = types.ModuleType("albumentations")
        aug = types.ModuleType("albumentations.augmentations")
        fn = types.ModuleType("albumentations.augmentations.functional")
        fn.image_compression = lambda img, quality, image_type: img  # type: ignore[attr-defined]
        sys.modules.update({"albumentations": alb, "albumentations.augmentations": aug, "albumentations.augmentations.functional": fn})
    spec = importlib.util.spec_from_file_location("reference_kernel_utils", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_spread_checkpoint(path: Path, encoder: str) -> Path:
    """A random-init classifier whose head is scaled so face scores spread over (0, 1)."""
    torch.manual_seed(0)
    model = DeepFakeClassifier(encoder)
    with torch.no_grad():
        model.fc.weight.mul_(2.0e5)
    save_checkpoint(model, path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the winner's kernel_utils.py")
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "media" / "clips")
    parser.add_argument("--limit", type=int, default=0, help="only the first N clips (0: all)")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: a random-init b0 made here)")
    parser.add_argument("--encoder", default="tf_efficientnet_b0.ns_jft_in1k")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "parity.json")
    args = parser.parse_args()

    ref = import_reference(args.reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    weights = args.weights or make_spread_checkpoint(args.out.parent / "parity_b0.pth", args.encoder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_classifier(weights, args.encoder)
    ensemble = Ensemble([model], device)
    ref_model = load_classifier(weights, args.encoder).to(device)
    if device.type == "cuda":
        ref_model = ref_model.half()
    detector = FaceDetector(device=device, rescale="half")
    predictor = VideoPredictor(detector, ensemble, frames_per_video=args.frames, strategy=confident_strategy)
    reader = ref.VideoReader(verbose=False)
    extractor = ref.FaceExtractor(lambda p: reader.read_frames(p, num_frames=args.frames))

    clips = sorted(p for p in args.clips.glob("*.mp4"))
    if args.limit:
        clips = clips[: args.limit]
    rows = []
    print(f"{'clip':48s} {'frames':>6s} {'faces':>5s} {'crops=':>6s} {'input max|d|':>12s} {'ours':>8s} {'ref':>8s} {'|d|':>9s}")
    for clip in clips:
        t0 = time.time()
        ref_frames, ref_idx = reader.read_frames(str(clip), num_frames=args.frames)
        ours = read_evenly_spaced_frames(clip, args.frames)
        same_frames = ref_idx == ours.indices and all(np.array_equal(a, b) for a, b in zip(ref_frames, ours.frames, strict=True))
        ref_faces = extractor.process_video(str(clip))
        ref_crops = [c for fd in ref_faces for c in fd["faces"]][: 4 * args.frames - 1]
        our_crops = predictor.crops_for(detector.detect(ours.frames))
        same_crops = len(ref_crops) == len(our_crops) and all(np.array_equal(a, b) for a, b in zip(ref_crops, our_crops, strict=True))
        input_diff = float("nan")
        if our_crops and len(ref_crops) == len(our_crops):
            ref_x = np.stack([ref.put_to_center(ref.isotropically_resize_image(c, 380), 380) for c in ref_crops])
            ref_t = torch.tensor(ref_x, device=device).float().permute(0, 3, 1, 2)
            for i in range(len(ref_t)):
                ref_t[i] = ref.normalize_transform(ref_t[i] / 255.0)
            our_t = normalize_batch(stack_crops(our_crops, 380), device)
            input_diff = float((ref_t - our_t).abs().max())
        ref_score = float(ref.predict_on_video(extractor, str(clip), args.frames, 380, [ref_model], strategy=ref.confident_strategy))
        our_score = predictor.predict(clip).score
        rows.append(
            {
                "clip": clip.name,
                "frames_identical": bool(same_frames),
                "frames": len(ours.frames),
                "faces_ours": len(our_crops),
                "faces_ref": len(ref_crops),
                "crops_identical": bool(same_crops),
                "input_max_abs_diff": input_diff,
                "score_ours": our_score,
                "score_ref": ref_score,
                "score_abs_diff": abs(our_score - ref_score),
                "seconds": round(time.time() - t0, 2),
            }
        )
        r = rows[-1]
        print(f"{clip.name:48s} {r['frames']:6d} {r['faces_ours']:5d} {str(r['crops_identical']):>6s} {input_diff:12.2e} {our_score:8.5f} {ref_score:8.5f} {r['score_abs_diff']:9.2e}", flush=True)
    summary = {
        "clips": len(rows),
        "frames_identical": sum(r["frames_identical"] for r in rows),
        "crops_identical": sum(r["crops_identical"] for r in rows),
        "max_score_abs_diff": max((r["score_abs_diff"] for r in rows), default=0.0),
        "score_spread": [min((r["score_ours"] for r in rows), default=0.0), max((r["score_ours"] for r in rows), default=0.0)],
        "device": str(device),
        "torch": torch.__version__,
        "weights": str(weights),
        "encoder": args.encoder,
    }
    print(json.dumps(summary, indent=1))
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    return 0 if summary["max_score_abs_diff"] <= 1e-3 and summary["crops_identical"] == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
