"""Per-video (or per-window) aggregation of frame-level fake probabilities.

`confident_strategy` is the DFDC winner's rule: trust a confident minority of
"fake" frames, else a confident majority of "real" frames, else plain mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Strategy = Callable[[Sequence[float] | np.ndarray], float]


def confident_strategy(scores: Sequence[float] | np.ndarray, t: float = 0.8) -> float:
    """Aggregate frame scores the way the DFDC winner did.

    If more than ``n // 2.5`` and more than 11 scores exceed ``t``, return the
    mean of those; else if over 90 % of scores are under 0.2, the mean of those;
    else the mean of all.
    """
    pred = np.asarray(scores, dtype=np.float64).reshape(-1)
    size = len(pred)
    if size == 0:
        raise ValueError("confident_strategy needs at least one score")
    fakes = np.count_nonzero(pred > t)
    if fakes > size // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    if np.count_nonzero(pred < 0.2) > 0.9 * size:
        return float(np.mean(pred[pred < 0.2]))
    return float(np.mean(pred))


def mean_strategy(scores: Sequence[float] | np.ndarray) -> float:
    """Plain mean, the baseline the winner compared against."""
    pred = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(pred) == 0:
        raise ValueError("mean_strategy needs at least one score")
    return float(np.mean(pred))


STRATEGIES: dict[str, Strategy] = {
    "confident": confident_strategy,
    "mean": mean_strategy,
}


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by its config name."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown aggregation strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
