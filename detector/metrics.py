"""The scoring metrics of the DFDC task, in numpy alone: `eval`, training's validation and the model evaluation share them."""

from __future__ import annotations

import numpy as np

EPS = 1e-15  # the DFDC metric clips probabilities to [EPS, 1 - EPS]


def log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Binary log loss with probabilities clipped to [1e-15, 1 - 1e-15] (the DFDC metric)."""
    p = np.clip(np.asarray(y_prob, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties count half).

    Equal to scikit-learn's ``roc_auc_score`` for binary labels; needs both classes.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(y_score, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # runs of equal scores share the average of the 1-based ranks they span
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))
