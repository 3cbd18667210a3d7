"""Side-by-side parity of the shipped scan path with the DFDC winner's own inference code.

Reference side, from a checkout of github.com/selimsef/dfdc_deepfake_challenge (not shipped
here; ``--reference-dir`` or ``$DFDC_REFERENCE_DIR``): ``kernel_utils.py``'s ``VideoReader`` +
``FaceExtractor`` + ``predict_on_video(..., strategy=confident_strategy)``, and the model is
``training/zoo/classifiers.py``'s ``DeepFakeClassifier`` loaded the way ``predict_folder.py`` does
(``torch.load(path, map_location="cpu")["state_dict"]``, ``^module.`` stripped,
``load_state_dict(strict=True)``, ``eval()``, ``half()`` on CUDA).

Our side is what ``deepfake-stream scan`` runs: ``build_predictor`` on the ``detector`` section of
``config.yaml`` (``fast_mtcnn: true`` included), with only the settings a comparison must pin
changed, as ``scan``'s own flags change them: ``weights``/``encoder``/``device``/``frames_per_video``
and ``rescale: half`` (the kernel always shrinks frames by 0.5 before MTCNN; we ship ``size``).

Compared per clip: the sampled frames, the face crops, the classifier inputs, the per-face
probabilities (each side's model outputs, recorded on the way) and the video scores.

Both files are read as text, patched by an exact, listed set of substitutions (each must match the
expected number of times, or the script stops) and executed from their real paths; the files on
disk are never changed.  The substitutions, also written to the JSON's ``shims``:

kernel_utils.py
  * ``from albumentations.augmentations.functional import image_compression`` ->
    ``image_compression = None``: albumentations is not a dependency; only used with
    ``apply_compression=True``, which the winner's predict_folder.py never passes.
  * ``dtype=np.int)`` -> ``dtype=int)``: ``np.int`` (an alias of ``int``) was removed in NumPy 1.24.
  * without CUDA only: ``device="cuda"`` -> ``device=DEVICE`` (MTCNN and the input tensor) and
    ``x[:n].half()`` -> ``x[:n].float()`` (fp16 convolutions are a CUDA thing; the model stays fp32).
  * ``except Exception as e:`` in ``predict_on_video`` also calls ``_parity_record_error(video_path, e)``:
    that bare except turns any failure into a silent 0.5; the run now fails naming the clip.

training/zoo/classifiers.py
  * ``pretrained=True`` -> ``pretrained=False``: no network here, and the checkpoint replaces every
    weight anyway (strict load).
  * only if this timm lacks a legacy name such as ``tf_efficientnet_b7_ns`` in
    ``timm.models.efficientnet`` (timm 1.x still has them as deprecation aliases): that attribute is
    injected as ``timm.create_model("tf_efficientnet_b7.ns_jft_in1k", **kwargs)``.

The classifier is a random-init encoder from the winner's ``encoder_params`` (default
``tf_efficientnet_b2_ns``, the smallest it has; it has no B0) whose head is scaled so face
scores spread over (0, 1); ``--weights`` takes a real checkpoint instead.  Exit status 1 (each
problem named on stderr and in the JSON) when the reference fell back to 0.5 through an exception,
when the sampled frames differ, or when a score differs by more than ``--tolerance``.  Crops that
differ are listed (``crops_differ``) but do not fail the run: our MTCNN sees a video's frames in one
batch, the kernel one frame per call, and the floating-point order of batched convolutions can move
a box by a pixel in a crowd; what matters is whether that reaches the score.

    uv run python bench/reference_parity.py --reference-dir PATH/dfdc_deepfake_challenge \
        --clips ../shared/media/clips --out bench/results/parity-reference-cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import detector.pipeline as pipeline  # noqa: E402
from detector.build import build_predictor  # noqa: E402
from detector.classifier import DeepFakeClassifier, canonical_encoder, save_checkpoint  # noqa: E402
from detector.config import DetectorConfig  # noqa: E402
from detector.pipeline import VideoPredictor  # noqa: E402
from detector.preprocessing import normalize_batch, stack_crops  # noqa: E402
from stream.config import load_config  # noqa: E402

REFERENCE_ENV = "DFDC_REFERENCE_DIR"
KERNEL = Path("kernel_utils.py")
CLASSIFIERS = Path("training/zoo/classifiers.py")
INPUT_SIZE = 380  # the winner's predict_folder.py


@dataclass(frozen=True)
class Substitution:
    """One textual change to a reference file: ``old`` must occur exactly ``count`` times."""

    old: str
    new: str
    count: int
    why: str


def kernel_substitutions(cuda: bool) -> list[Substitution]:
    subs = [
        Substitution(
            "from albumentations.augmentations.functional import image_compression",
            "image_compression = None",
            1,
            "albumentations is not installed; image_compression only runs with apply_compression=True, which predict_folder.py never passes",
        ),
        Substitution("dtype=np.int)", "dtype=int)", 1, "np.int (an alias of int) was removed in NumPy 1.24"),
        Substitution(
            "    except Exception as e:\n",
            "    except Exception as e:\n        _parity_record_error(video_path, e)\n",
            1,
            "predict_on_video's catch-all turns any failure into 0.5; the exception is recorded so the run fails naming the clip",
        ),
    ]
    if not cuda:
        subs += [
            Substitution('device="cuda"', "device=DEVICE", 2, "no CUDA here: MTCNN and the input tensor on DEVICE (cpu)"),
            Substitution("x[:n].half()", "x[:n].float()", 1, "no CUDA here: fp32 input for the fp32 model (the winner ran fp16 on CUDA)"),
        ]
    return subs


CLASSIFIER_SUBSTITUTIONS = [
    Substitution("pretrained=True", "pretrained=False", 9, "no network; the checkpoint then replaces every weight (strict load)"),
]


def exec_patched(path: Path, name: str, subs: list[Substitution], env: dict[str, Any]) -> types.ModuleType:
    """Execute ``path`` as module ``name`` after ``subs`` (each checked), with ``env`` as extra globals."""
    text = path.read_text(encoding="utf-8")
    for sub in subs:
        found = text.count(sub.old)
        if found != sub.count:
            raise SystemExit(f"{path}: expected {sub.count} x {sub.old!r}, found {found}: not the reference this script knows")
        text = text.replace(sub.old, sub.new)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__dict__.update(env)
    sys.modules[name] = module
    exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 - the reference's own code, patched as listed
    return module


def legacy_timm_names() -> list[str]:
    """Ensure the ``tf_efficientnet_bN_ns`` names classifiers.py imports exist; returns a note per injected one."""
    import timm
    import timm.models.efficientnet as effnet

    notes = []
    for i in range(2, 8):
        legacy = f"tf_efficientnet_b{i}_ns"
        if hasattr(effnet, legacy):
            continue
        current = canonical_encoder(legacy)

        def make(current: str = current, **kwargs: Any) -> torch.nn.Module:
            return timm.create_model(current, **kwargs)

        setattr(effnet, legacy, make)
        notes.append(f"timm.models.efficientnet.{legacy} injected as timm.create_model({current!r}, **kwargs): this timm no longer has it")
    return notes


@dataclass
class Reference:
    kernel: types.ModuleType
    classifiers: types.ModuleType
    errors: list[tuple[str, str]]  # (video_path, exception) caught by predict_on_video's catch-all
    shims: list[str]
    files: dict[str, str]  # relative path -> sha256


def load_reference(root: Path, device: torch.device) -> Reference:
    errors: list[tuple[str, str]] = []
    kernel_subs = kernel_substitutions(device.type == "cuda")

    def record(video_path: str, exc: BaseException) -> None:
        errors.append((str(video_path), f"{type(exc).__name__}: {exc}"))

    env = {"DEVICE": str(device), "_parity_record_error": record}
    kernel = exec_patched(root / KERNEL, "dfdc_reference_kernel_utils", kernel_subs, env)
    injected = legacy_timm_names()
    classifiers = exec_patched(root / CLASSIFIERS, "dfdc_reference_classifiers", CLASSIFIER_SUBSTITUTIONS, {})
    shims = [f"{KERNEL}: {s.old.strip()!r} -> {s.new.strip()!r} (x{s.count}): {s.why}" for s in kernel_subs]
    shims += [f"{CLASSIFIERS}: {s.old!r} -> {s.new!r} (x{s.count}): {s.why}" for s in CLASSIFIER_SUBSTITUTIONS]
    shims += injected
    files = {str(p): hashlib.sha256((root / p).read_bytes()).hexdigest() for p in (KERNEL, CLASSIFIERS)}
    return Reference(kernel, classifiers, errors, shims, files)


def load_reference_model(ref: Reference, weights: Path, encoder: str, device: torch.device) -> torch.nn.Module:
    """predict_folder.py's loading, line for line (``half()`` only on CUDA)."""
    model = ref.classifiers.DeepFakeClassifier(encoder=encoder).to(device)
    checkpoint = torch.load(weights, map_location="cpu")
    state_dict = checkpoint.get("state_dict", checkpoint)
    model.load_state_dict({re.sub("^module.", "", k): v for k, v in state_dict.items()}, strict=True)
    model.eval()
    return model.half() if device.type == "cuda" else model


def make_spread_checkpoint(path: Path, encoder: str, head_scale: float) -> Path:
    """A random-init classifier whose head is scaled so face scores spread over (0, 1)."""
    torch.manual_seed(0)
    model = DeepFakeClassifier(encoder)
    with torch.no_grad():
        model.fc.weight.mul_(head_scale)
    save_checkpoint(model, path)
    return path


def shipped_config(config: Path, weights: Path, encoder: str, device: torch.device, frames: int) -> tuple[DetectorConfig, dict[str, object]]:
    """config.yaml's detector section with what a parity run must pin, overridden the way ``scan`` does."""
    cfg = load_config(config).detector
    updates: dict[str, object] = {
        "weights": [weights.resolve()],
        "weights_dir": Path("."),
        "encoder": canonical_encoder(encoder),
        "device": str(device),
        "frames_per_video": frames,
        "rescale": "half",
    }
    return DetectorConfig.model_validate({**cfg.model_dump(), **updates}), updates


class Recorder:
    """Pass-through wrapper of a callable that keeps its results (``result``: the last one)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.results: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        self.results.append(out)
        return out

    @property
    def result(self) -> Any:
        return self.results[-1] if self.results else None


def same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def compare_clip(clip: Path, ref: Reference, ref_model: torch.nn.Module, predictor: VideoPredictor, frames: int, device: torch.device) -> dict[str, Any]:
    """Both sides once on ``clip``; frames and crops are what each side's own code produced on the way."""
    k = ref.kernel
    t0 = time.time()
    reader = k.VideoReader()
    ref_read = Recorder(lambda p: reader.read_frames(p, num_frames=frames))
    extractor = k.FaceExtractor(ref_read)  # a new MTCNN per clip is cheap; it keeps nothing between clips
    ref_faces = Recorder(extractor.process_video)
    extractor.process_video = ref_faces
    errors_before = len(ref.errors)
    ref_logits = Recorder(ref_model)
    ref_score = float(k.predict_on_video(extractor, str(clip), frames, INPUT_SIZE, [ref_logits], strategy=k.confident_strategy))
    ref_error = "; ".join(e for _, e in ref.errors[errors_before:]) or None
    if ref_read.result is None:
        ref_error = ref_error or "VideoReader.read_frames returned None (its own catch-all or an unreadable file)"
    t1 = time.time()

    our_read = Recorder(pipeline.read_evenly_spaced_frames)
    our_detect = Recorder(predictor.detector.detect)
    our_probs = Recorder(predictor.ensemble.predict)
    pipeline.read_evenly_spaced_frames, predictor.detector.detect, predictor.ensemble.predict = our_read, our_detect, our_probs  # type: ignore[method-assign]
    try:
        ours = predictor.predict(clip)
    finally:
        pipeline.read_evenly_spaced_frames = our_read.fn
        del predictor.detector.detect, predictor.ensemble.predict
    t2 = time.time()

    ref_frames, ref_idx = ref_read.result if ref_read.result is not None else ([], [])
    sampled = our_read.result
    same_frames = sampled is not None and list(ref_idx) == sampled.indices and same_arrays(list(ref_frames), sampled.frames)
    ref_crops = [c for fd in (ref_faces.result or []) for c in fd["faces"]][: 4 * frames - 1]
    our_crops = predictor.crops_for(our_detect.result or [])
    input_diff = float("nan")
    if our_crops and len(ref_crops) == len(our_crops):  # the kernel's preprocessing, as predict_on_video does it
        ref_x = np.stack([k.put_to_center(k.isotropically_resize_image(c, INPUT_SIZE), INPUT_SIZE) for c in ref_crops])
        ref_t = torch.tensor(ref_x, device=device).float().permute(0, 3, 1, 2)
        for i in range(len(ref_t)):
            ref_t[i] = k.normalize_transform(ref_t[i] / 255.0)
        our_t = normalize_batch(stack_crops(our_crops, predictor.input_size), device)
        input_diff = float((ref_t - our_t).abs().max())
    ref_p = torch.sigmoid(ref_logits.result.float()).reshape(-1).cpu().numpy() if ref_logits.results else np.zeros(0, np.float32)
    our_p = np.concatenate([p[0] for p in our_probs.results]) if our_probs.results else np.zeros(0, np.float32)
    face_diff = float(np.abs(ref_p - our_p).max()) if len(ref_p) == len(our_p) and len(our_p) else float("nan")
    return {
        "clip": clip.name,
        "frames": len(sampled.frames) if sampled is not None else 0,
        "frames_identical": bool(same_frames),
        "faces_ours": len(our_crops),
        "faces_ref": len(ref_crops),
        "crops_identical": same_arrays(ref_crops, our_crops),
        "input_max_abs_diff": input_diff,
        "face_scores_max_abs_diff": face_diff,
        "score_ours": ours.score,
        "score_ref": ref_score,
        "score_abs_diff": abs(ours.score - ref_score),
        "ours_error": ours.error.replace(str(clip), clip.name) if ours.error else None,
        "reference_error": ref_error,
        "seconds_ref": round(t1 - t0, 2),
        "seconds_ours": round(t2 - t1, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", type=Path, default=os.environ.get(REFERENCE_ENV), help=f"checkout of selimsef/dfdc_deepfake_challenge (default ${REFERENCE_ENV})")
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "media" / "clips")
    parser.add_argument("--limit", type=int, default=0, help="only the first N clips (0: all)")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml", help="the shipped config whose detector section our side runs")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: a random-init, head-scaled one made here)")
    parser.add_argument("--encoder", default="tf_efficientnet_b2_ns", help="a key of the winner's encoder_params")
    parser.add_argument("--head-scale", type=float, default=1.0e6, help="factor on the random head's weights (spreads the scores)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted |score difference|")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "parity.json")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "out", help="where the random-init checkpoint is written")
    args = parser.parse_args()
    if args.reference_dir is None or not (args.reference_dir / KERNEL).is_file() or not (args.reference_dir / CLASSIFIERS).is_file():
        parser.error(f"--reference-dir (or ${REFERENCE_ENV}) must be a checkout of selimsef/dfdc_deepfake_challenge with {KERNEL} and {CLASSIFIERS}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref = load_reference(args.reference_dir, device)
    if args.encoder not in ref.classifiers.encoder_params:
        parser.error(f"--encoder must be one of the winner's encoder_params: {', '.join(ref.classifiers.encoder_params)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    weights = args.weights or make_spread_checkpoint(args.work_dir / f"parity_{args.encoder}.pth", args.encoder, args.head_scale)
    ref_model = load_reference_model(ref, weights, args.encoder, device)
    cfg, overrides = shipped_config(args.config, weights, args.encoder, device, args.frames)
    predictor = build_predictor(cfg)

    clips = sorted(args.clips.glob("*.mp4"))[: args.limit or None]
    rows = []
    print(f"{'clip':48s} {'frames':>6s} {'faces':>5s} {'crops=':>6s} {'input max|d|':>12s} {'face max|d|':>11s} {'ours':>8s} {'ref':>8s} {'|d|':>9s}")
    for clip in clips:
        r = compare_clip(clip, ref, ref_model, predictor, args.frames, device)
        rows.append(r)
        print(
            f"{clip.name:48s} {r['frames']:6d} {r['faces_ours']:5d} {str(r['crops_identical']):>6s} {r['input_max_abs_diff']:12.2e} {r['face_scores_max_abs_diff']:11.2e} "
            f"{r['score_ours']:8.5f} {r['score_ref']:8.5f} {r['score_abs_diff']:9.2e}",
            flush=True,
        )
        if r["reference_error"]:
            print(f"REFERENCE FAILED on {clip.name}: {r['reference_error']} (predict_on_video returned its fallback 0.5)", file=sys.stderr, flush=True)
    failed = [(r["clip"], r["reference_error"]) for r in rows if r["reference_error"]]
    scores = [r["score_ours"] for r in rows]
    summary = {
        "clips": len(rows),
        "frames_identical": sum(r["frames_identical"] for r in rows),
        "crops_identical": sum(r["crops_identical"] for r in rows),
        "crops_differ": [r["clip"] for r in rows if not r["crops_identical"]],
        "inputs_identical": sum(r["input_max_abs_diff"] == 0.0 for r in rows),
        "face_scores_identical": sum(r["face_scores_max_abs_diff"] == 0.0 for r in rows),
        "max_face_score_abs_diff": max((r["face_scores_max_abs_diff"] for r in rows if r["face_scores_max_abs_diff"] == r["face_scores_max_abs_diff"]), default=0.0),
        "max_score_abs_diff": max((r["score_abs_diff"] for r in rows), default=0.0),
        "tolerance": args.tolerance,
        "score_spread": [min(scores, default=0.0), max(scores, default=0.0)],
        "reference_failures": len(failed),
        "device": str(device),
        "torch": torch.__version__,
        "weights": weights.name,
        "encoder_reference": args.encoder,
        "encoder_ours": cfg.encoder,
        "head_scale": None if args.weights else args.head_scale,
        "ours": f"build_predictor({args.config.name} detector section + overrides)",
        "overrides": {k: ([p.name for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v) for k, v in overrides.items()},
        "detector_config": cfg.model_dump(mode="json", exclude={"weights", "weights_dir"}),
        "reference": {"repository": "selimsef/dfdc_deepfake_challenge", "sha256": ref.files},
        "shims": ref.shims,
    }
    problems = [f"the reference's predict_on_video fell back to 0.5 on {name}: {error}" for name, error in failed]
    problems += [f"{r['clip']}: the frames differ" for r in rows if not r["frames_identical"]]
    problems += [f"{r['clip']}: |score difference| {r['score_abs_diff']:.2e} > {args.tolerance:.0e}" for r in rows if r["score_abs_diff"] > args.tolerance]
    summary["verdict"] = "fail" if problems else "pass"
    summary["problems"] = problems
    print(json.dumps({k: v for k, v in summary.items() if k not in ("detector_config", "shims")}, indent=1))
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1) + "\n")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
