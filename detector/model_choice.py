"""Which classifier runs: the configured checkpoints, else the embedded model, else (demo only) random weights.

The DFDC winner's checkpoints are 1.9 GB of release assets that a machine without internet
cannot fetch.  When the configured ensemble is the winner's and none of its files is there,
the analyzer runs the small self-blended model shipped in ``detector/models/`` instead and
says so, with the one command that fetches the winner's.  Checkpoints the user configured
by name are never silently replaced: missing ones are an error naming the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from detector.classifier import read_metadata
from detector.config import DetectorConfig
from detector.errors import CheckpointError
from detector.weights import PUBLISHED_CHECKPOINTS, download_command

log = logging.getLogger(__name__)

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "models" / "sbi_lite0.pth"
EMBEDDED_CARD = "detector/models/MODEL_CARD.md"
RANDOM_ENCODER = "tf_efficientnet_b0.ns_jft_in1k"

ModelKind = Literal["configured", "embedded", "random"]


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoints to load and how to describe them in logs, summaries and prediction files."""

    kind: ModelKind
    paths: list[Path]
    encoder: str
    input_size: int
    label: str
    missing: list[Path] = field(default_factory=list)  # configured checkpoints that are not there
    hint: str | None = None  # the command that fetches what is missing

    @property
    def random(self) -> bool:
        return self.kind == "random"


def _uses_published(cfg: DetectorConfig) -> bool:
    """Whether the configured checkpoints are (a subset of) the winner's published ones."""
    return bool(cfg.weights) and all(w.name in PUBLISHED_CHECKPOINTS and not w.is_absolute() for w in cfg.weights)


def embedded_choice(reason: str = "") -> ModelChoice | None:
    """The shipped self-blended model, with the encoder and input size its checkpoint records."""
    if not EMBEDDED_CHECKPOINT.is_file():
        return None
    meta = read_metadata(EMBEDDED_CHECKPOINT)
    encoder, size = str(meta["encoder"]), int(meta["input_size"])  # type: ignore[call-overload]
    label = f"embedded self-blended {encoder} at {size} px (see {EMBEDDED_CARD})" + (f"; {reason}" if reason else "")
    return ModelChoice("embedded", [EMBEDDED_CHECKPOINT], encoder, size, label)


def choose_model(cfg: DetectorConfig, *, allow_random: bool = False) -> ModelChoice:
    """Decide what runs; raises CheckpointError (one line, with the fixing command) when nothing may."""
    paths = cfg.weight_paths()
    present = [p for p in paths if p.is_file()]
    missing = [p for p in paths if not p.is_file()]
    published = _uses_published(cfg)
    hint = download_command(cfg.weights_dir, [p.name for p in missing]) if published else None
    if present and not missing:
        return ModelChoice("configured", present, cfg.encoder, cfg.input_size, f"{len(present)} checkpoint(s) of {cfg.encoder}")
    if present and published:
        log.warning("%d of %d configured checkpoints are missing; the ensemble uses the %d present (all of them: %s)", len(missing), len(paths), len(present), hint)
        return ModelChoice("configured", present, cfg.encoder, cfg.input_size, f"{len(present)} of {len(paths)} checkpoints of {cfg.encoder}", missing, hint)
    if present:
        raise CheckpointError(f"checkpoint {missing[0]} does not exist ({len(missing)} of {len(paths)} configured checkpoints missing)")
    if published and cfg.fallback == "embedded":
        embedded = embedded_choice(f"the DFDC winner's checkpoints are not in {cfg.weights_dir}: {hint}")
        if embedded is not None:
            return ModelChoice(embedded.kind, embedded.paths, embedded.encoder, embedded.input_size, embedded.label, missing, hint)
    if allow_random:
        return ModelChoice("random", [], RANDOM_ENCODER, cfg.input_size, "RANDOM B0 (scores meaningless)", missing, hint)
    if hint is not None:
        raise CheckpointError(f"no classifier checkpoint in {cfg.weights_dir} and no embedded model; fetch the DFDC winner's with: {hint}")
    raise CheckpointError(f"checkpoint {missing[0]} does not exist" + (f" ({len(missing)} configured checkpoints missing)" if len(missing) > 1 else ""))
