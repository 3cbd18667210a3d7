"""Honest video-level evaluation of a trained model on labelled clips.

Fakes of each kind are scored against REAL videos of held-out identities only (identities the
model never trained on), with a bootstrap 95 % interval for the ROC AUC because the shared
clip set is small: an AUC from 13 fakes and 10 reals moves a lot with one video.  Each row
stands beside the constant-score baseline (0.5 everywhere: AUC 0.5, log loss ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detector.metrics import log_loss, roc_auc

CONSTANT_LOG_LOSS = math.log(2.0)


class EvaluationError(ValueError):
    """Inputs that cannot give an honest number; the message says why."""


@dataclass(frozen=True)
class AucEstimate:
    auc: float
    low: float  # bootstrap percentile interval
    high: float
    draws: int


@dataclass(frozen=True)
class KindResult:
    kind: str
    fakes: int
    reals: int
    auc: AucEstimate
    log_loss: float
    baseline_auc: float = 0.5
    baseline_log_loss: float = CONSTANT_LOG_LOSS

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def pairwise_wins(fake_scores: np.ndarray, real_scores: np.ndarray) -> np.ndarray:
    """(fakes, reals) matrix: 1 where the fake scores higher, 0.5 on a tie, else 0 (its mean is the AUC)."""
    f, r = np.asarray(fake_scores, dtype=np.float64)[:, None], np.asarray(real_scores, dtype=np.float64)[None, :]
    return (f > r) + 0.5 * (f == r)


def auc_from_counts(wins: np.ndarray, fake_counts: np.ndarray, real_counts: np.ndarray) -> np.ndarray:
    """AUC of resampled sets given how often each video was drawn: (draws, fakes) and (draws, reals) counts."""
    return np.einsum("di,ij,dj->d", fake_counts, wins, real_counts) / (fake_counts.sum(1) * real_counts.sum(1))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, draws: int = 2000, seed: int = 0, level: float = 0.95) -> AucEstimate:
    """ROC AUC with a percentile interval from resampling videos.

    Reals and fakes are resampled separately (stratified), so every draw has both classes and
    the class sizes of the data; each draw's AUC comes from the pairwise win matrix, which is
    exactly ``roc_auc_score`` of the resampled videos, for all draws at once.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    fakes, reals = p[y == 1], p[y == 0]
    if len(fakes) == 0 or len(reals) == 0:
        raise EvaluationError(f"an AUC needs both classes; got {len(fakes)} fakes and {len(reals)} reals")
    rng = np.random.default_rng(seed)
    fake_counts = rng.multinomial(len(fakes), np.full(len(fakes), 1 / len(fakes)), size=draws)
    real_counts = rng.multinomial(len(reals), np.full(len(reals), 1 / len(reals)), size=draws)
    samples = auc_from_counts(pairwise_wins(fakes, reals), fake_counts, real_counts)
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return AucEstimate(auc=roc_auc(y, p), low=float(low), high=float(high), draws=draws)


def held_out_reals(
    labels: Mapping[str, tuple[int, str]], held_out: Collection[str], identities: Mapping[str, str] | None = None
) -> list[str]:
    """REAL files whose name, stem or identity is in ``held_out``; a name matching nothing is an error."""
    identities = identities or {}
    reals = [name for name, (label, _) in labels.items() if label == 0]
    keys = {name: {name, Path(name).stem, identities.get(name, Path(name).stem)} for name in reals}
    unknown = [h for h in held_out if not any(h in k for k in keys.values())]
    if unknown:
        raise EvaluationError(f"held-out names match no REAL video of the labels: {', '.join(sorted(unknown))}")
    return sorted(name for name, k in keys.items() if k & set(held_out))


def evaluate_by_kind(
    predictions: Mapping[str, float],
    labels: Mapping[str, tuple[int, str]],
    held_out: Collection[str],
    identities: Mapping[str, str] | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> list[KindResult]:
    """One row per fake kind, then ``all``: its fakes against every held-out real, scored videos only."""
    reals = [name for name in held_out_reals(labels, held_out, identities) if name in predictions]
    if not reals:
        raise EvaluationError("no held-out REAL video has a prediction")
    fakes_by_kind: dict[str, list[str]] = {}
    for name, (label, kind) in sorted(labels.items()):
        if label == 1 and name in predictions:
            fakes_by_kind.setdefault(kind, []).append(name)
    if not fakes_by_kind:
        raise EvaluationError("no FAKE video has a prediction")
    fakes_by_kind = dict(sorted(fakes_by_kind.items()))
    fakes_by_kind["all"] = [name for names in fakes_by_kind.values() for name in names]
    rows = []
    for kind, fakes in fakes_by_kind.items():
        names = fakes + reals
        y = np.r_[np.ones(len(fakes)), np.zeros(len(reals))]
        p = np.array([predictions[n] for n in names])
        rows.append(KindResult(kind, len(fakes), len(reals), bootstrap_auc(y, p, draws, seed), log_loss(y, p)))
    return rows


def format_table(rows: list[KindResult]) -> str:
    """A plain-text table, model beside the constant 0.5 baseline."""
    lines = [f"{'kind':<30} {'fakes':>5} {'reals':>5}  {'ROC AUC [95% CI]':<24} {'log loss':>8}   {'const AUC':>9} {'const LL':>8}"]
    for r in rows:
        interval = f"{r.auc.auc:.3f} [{r.auc.low:.3f}, {r.auc.high:.3f}]"
        lines.append(f"{r.kind:<30} {r.fakes:>5} {r.reals:>5}  {interval:<24} {r.log_loss:>8.4f}   {r.baseline_auc:>9.3f} {r.baseline_log_loss:>8.4f}")
    return "\n".join(lines)
