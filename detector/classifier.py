"""The DFDC winner's classifier, its checkpoint loader and the model ensemble.

``DeepFakeClassifier`` = timm EfficientNet encoder (``forward_features``) +
global average pool + dropout + ``Linear(features, 1)``.  The encoder is made
with ``pretrained=False``: weights only ever come from our checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from detector.aggregation import Strategy, confident_strategy
from detector.compiled import MIN_DYNAMIC_BATCH, Backend, compile_or_keep, is_compiled, use_compile_cache
from detector.errors import CheckpointError  # noqa: F401 - raised here; importable from here as before
from detector.weights import DEFAULT_ENCODER

log = logging.getLogger(__name__)

# The winner's names (timm 0.1.x) map onto today's pretrained tags.
LEGACY_ENCODER_NAMES = {f"tf_efficientnet_b{i}_ns": f"tf_efficientnet_b{i}.ns_jft_in1k" for i in range(8)}


def canonical_encoder(name: str) -> str:
    """Accept the winner's legacy encoder names as well as today's timm names."""
    return LEGACY_ENCODER_NAMES.get(name, name)


class DeepFakeClassifier(nn.Module):
    """EfficientNet features -> pooled -> dropout -> one fake logit."""

    def __init__(self, encoder: str = DEFAULT_ENCODER, dropout_rate: float = 0.0) -> None:
        super().__init__()
        name = canonical_encoder(encoder)
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"unknown timm encoder {encoder!r}")
        self.encoder = timm.create_model(name, pretrained=False)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(self.encoder.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_features(x)
        x = self.avg_pool(x).flatten(1)
        x = self.dropout(x)
        return self.fc(x)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (run `deepfake-stream weights download`?)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the safe unpickler means 'not a checkpoint'
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is not a loadable PyTorch weights file: {first_line}") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_metadata(path: str | Path) -> dict[str, object]:
    """The plain keys a checkpoint carries beside its state dict (the embedded model's encoder and input size)."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {k: v for k, v in raw.items() if k != "state_dict" and not isinstance(v, torch.Tensor)} if isinstance(raw, Mapping) else {}


def load_classifier(path: str | Path, encoder: str = DEFAULT_ENCODER) -> DeepFakeClassifier:
    """Load a published checkpoint (``{"state_dict": ...}`` or bare, ``module.``-prefixed) strictly."""
    path = Path(path)
    state = _read_state_dict(path)
    model = DeepFakeClassifier(encoder)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match encoder {encoder}: "
            f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has tensors of the wrong shape for {encoder}: {_short(wrong)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _short(items: Sequence[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def save_checkpoint(model: nn.Module, path: str | Path, metadata: Mapping[str, object] | None = None, half: bool = False) -> None:
    """Write ``model`` in the published layout: ``{"state_dict": {"module." + key: ...}}``.

    Tensors are stored on the CPU.  ``metadata`` adds plain keys beside ``state_dict`` (the
    loader ignores them); ``half`` stores floating tensors as fp16, half the size, and they
    load into an fp32 model.
    """
    if metadata is not None and "state_dict" in metadata:
        raise ValueError("metadata cannot hold a 'state_dict' key")
    state = {f"module.{k}": (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    torch.save({**(metadata or {}), "state_dict": state}, Path(path))


class Ensemble:
    """N classifiers on one device; per-face probabilities and the winner's averaging.

    fp16 + channels_last on CUDA (as the winner ran), fp32 on CPU.
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device, half: bool | None = None, label: str = "") -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.label = label or f"{len(models)} model(s)"  # what runs, for logs and prediction files
        self.device = device
        self.half = device.type == "cuda" if half is None else half
        self.dtype = torch.float16 if self.half else torch.float32
        self.channels_last = device.type == "cuda"
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.models: list[nn.Module] = [m.to(device=device, dtype=self.dtype, memory_format=memory_format).eval() for m in models]
        self._runners: list[Callable[[torch.Tensor], torch.Tensor]] = list(self.models)
        self._compiled = [False] * len(self.models)

    def enable_compile(self, input_size: int, cache_dir: Path | None = None, backend: Backend = "inductor") -> None:
        """Compile each model with ``torch.compile`` (CUDA only; a no-op on CPU, whose path stays the winner's
        code). Call before ``enable_cuda_graphs``, which then captures the compiled forwards. A model that
        fails to compile stays uncompiled, with a warning."""
        if self.device.type != "cuda":
            return
        if cache_dir is not None:
            use_compile_cache(cache_dir)
        log.info("compiling the classifier (%s) with torch.compile: ~1.5 min on a first start (B7, H100), ~30 s from the cache", self.label)
        example = torch.zeros(MIN_DYNAMIC_BATCH, 3, input_size, input_size, dtype=self.dtype, device=self.device)
        example = example.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self._runners = [compile_or_keep(m, example, f"classifier {i + 1}/{len(self.models)} ({self.label})", backend) for i, m in enumerate(self.models)]
        self._compiled = [is_compiled(run) for run in self._runners]

    @property
    def compiled(self) -> bool:
        """Whether every model runs compiled."""
        return all(self._compiled)

    def enable_cuda_graphs(self, input_size: int, sizes: tuple[int, ...] | None = None) -> None:
        """Capture CUDA graphs per model for fixed batch sizes (CUDA only; a no-op on CPU). Compiled models
        are captured compiled, without a graph of one crop (a single crop replays the graph of two)."""
        if self.device.type != "cuda":
            return
        from detector.cuda_graphs import DEFAULT_SIZES, GraphedModel

        pool = torch.cuda.graph_pool_handle()
        eager_sizes = sizes or DEFAULT_SIZES
        compiled_sizes = tuple(s for s in eager_sizes if s >= MIN_DYNAMIC_BATCH) or (MIN_DYNAMIC_BATCH,)
        self._runners = [
            GraphedModel(run, input_size, self.dtype, self.channels_last, compiled_sizes if compiled else eager_sizes, self.device, pool)
            for run, compiled in zip(self._runners, self._compiled, strict=True)
        ]

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], encoder: str, device: torch.device, label: str = "") -> Ensemble:
        return cls([load_classifier(p, encoder) for p in paths], device, label=label)

    def __len__(self) -> int:
        return len(self.models)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Normalised NCHW batch -> fake probabilities, shape (n_models, n_faces)."""
        if x.shape[0] == 0:
            return np.zeros((len(self.models), 0), dtype=np.float32)
        out = [torch.sigmoid(run(x).float().reshape(-1)) for run in self._runners]
        return torch.stack(out).cpu().numpy()

    @staticmethod
    def aggregate(per_model_scores: np.ndarray, strategy: Strategy = confident_strategy) -> float:
        """Strategy per model, then the mean over models (the winner's ensembling)."""
        return float(np.mean([strategy(row) for row in per_model_scores]))
