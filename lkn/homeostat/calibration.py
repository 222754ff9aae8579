"""Calibration math (pure, numpy): how well a score separates wrong answers from right ones,
and which threshold gives a wanted escalation share or accuracy.

Convention: a higher score means "less sure"; a request is escalated (ANALYTIC) when
``score >= threshold``, as ``probe.classify`` decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def auroc(scores: Sequence[float] | np.ndarray, wrong: Sequence[bool] | np.ndarray) -> float:
    """P(score of a wrong answer > score of a right one), ties counted half; NaN when one
    class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(wrong, dtype=bool)
    pos, neg = s[w], s[~w]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def bootstrap(scores: np.ndarray, wrong: np.ndarray, baseline: np.ndarray | None = None,
              rounds: int = 1000, seed: int = 0) -> tuple[float, float, float, float]:
    """95 % percentile intervals of the AUROC and of its paired difference to ``baseline``
    (same resamples): ``(lo, hi, diff_lo, diff_hi)``; the difference is 0 without one."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    a, d = [], []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        value = auroc(scores[idx], wrong[idx])
        a.append(value)
        if baseline is not None:
            d.append(value - auroc(baseline[idx], wrong[idx]))
    lo, hi = np.nanpercentile(a, [2.5, 97.5])
    dlo, dhi = np.nanpercentile(d, [2.5, 97.5]) if d else (0.0, 0.0)
    return float(lo), float(hi), float(dlo), float(dhi)


@dataclass(frozen=True)
class Point:
    """One threshold on the curve: escalate when score >= threshold."""
    threshold: float
    escalated: float        # share of requests escalated
    kept_accuracy: float    # accuracy of the small model's answers that are kept (NaN if none)
    cascade_accuracy: float | None  # with the strong model's answers for the escalated ones


def curve(scores: Sequence[float], small_right: Sequence[bool],
          strong_right: Sequence[bool] | None = None) -> list[Point]:
    """Every distinct threshold, from "escalate all" (the lowest score) to "escalate none"
    (just above the highest), sorted by the share escalated (ascending)."""
    s = np.asarray(scores, dtype=np.float64)
    small = np.asarray(small_right, dtype=bool)
    strong = None if strong_right is None else np.asarray(strong_right, dtype=bool)
    if s.size == 0:
        return []
    points = []
    for t in [float(np.nextafter(s.max(), np.inf)), *sorted(set(s.tolist()), reverse=True)]:
        esc = s >= t
        kept = ~esc
        points.append(Point(
            threshold=t, escalated=float(esc.mean()),
            kept_accuracy=float(small[kept].mean()) if kept.any() else float("nan"),
            cascade_accuracy=None if strong is None else float(
                np.where(esc, strong, small).mean())))
    return points


def threshold_for_share(points: Sequence[Point], share: float) -> Point:
    """The threshold escalating the largest share not above ``share`` (ties in the scores
    make some shares unreachable; never more than asked)."""
    fitting = [p for p in points if p.escalated <= share + 1e-12]
    return max(fitting, key=lambda p: (p.escalated, -p.threshold))


def threshold_for_accuracy(points: Sequence[Point], target: float) -> Point | None:
    """The threshold that escalates the least while reaching ``target``: the cascade's accuracy
    where the strong model's answers are known, else the kept answers' accuracy. None when no
    threshold reaches it."""
    def accuracy(p: Point) -> float:
        return p.cascade_accuracy if p.cascade_accuracy is not None else p.kept_accuracy
    reaching = [p for p in points if not np.isnan(accuracy(p)) and accuracy(p) >= target - 1e-12]
    if not reaching:
        return None
    return min(reaching, key=lambda p: (p.escalated, -p.threshold))
