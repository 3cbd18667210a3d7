"""GPU smoke test and throughput of SBI training, from a prepared dataset, without the service's CLI.

The device machines of this workplace have torch, timm and OpenCV but neither
pydantic (the CLI's config) nor the Lite0 weights package: carry the dataset directory and the
Lite0 ``.pth`` and run, from the repository root,

    PYTHONUNBUFFERED=1 python3 bench/train_smoke.py --dataset out/faces --imagenet-weights out/lite0/efficientnet-lite0-57934424.pth \
        --out "$OUT/sbi-lite0.pth" --epochs 2 --steps-per-epoch 100 --batch-size 64 --input-size 320 --workers 12

It first times self-blending + pair augmentation alone on the device, then trains (bf16 autocast,
channels_last) and prints the epoch log (images/s per epoch, validation AUC and log loss).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.devices import resolve_device  # noqa: E402
from training.augment import augment_pairs  # noqa: E402
from training.sbi import self_blend  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


def time_self_blend(pairs: int, size: int, device: torch.device, repeats: int = 20) -> float:
    """Milliseconds per batch of ``pairs`` faces for self-blending plus pair augmentation."""
    faces = torch.randint(0, 256, (pairs, 3, size, size), dtype=torch.uint8, device=device)
    points = torch.tensor([[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.6], [0.58, 0.6]], device=device).mul(size)[None].repeat(pairs, 1, 1)
    gen = torch.Generator().manual_seed(0)

    def once() -> None:
        blended = self_blend(faces, points, gen)
        augment_pairs(faces.float() / 255, blended.images, gen)

    for _ in range(3):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--imagenet-weights", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-identities", nargs="+", default=None)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp16", action="store_true", help="store the checkpoint's tensors as fp16 (half the size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    print(f"self-blend + augment: {time_self_blend(args.batch_size // 2, args.input_size, device):.1f} ms per {args.batch_size // 2} pairs at {args.input_size} px on {device}")
    result = train(TrainConfig(
        dataset=args.dataset, out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        input_size=args.input_size, device=args.device, workers=args.workers, progress=False, imagenet_weights=args.imagenet_weights,
        val_identities=tuple(args.val_identities) if args.val_identities else None, val_fraction=args.val_fraction,
        lr=args.lr, seed=args.seed, fp16=args.fp16,
    ))
    print(json.dumps(result.history, indent=1))
    print(f"best epoch {result.best_epoch}, checkpoint {result.checkpoint} ({result.checkpoint.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
