"""A threshold that holds a share (``homeostasis.analytic_share``): the homeostat keeps each
model's recent probe scores and sets the threshold where the wanted share of them lies at or
above it. A threshold calibrated on one set of questions escalates another share on other
traffic (bench/RESULTS.md: 50 % on the calibration split became 60 % on other kinds); one that
follows the scores lkn sees holds the share, and with it the cost, on any traffic, without
labels. Until the window holds ``MIN_SCORES`` the configured threshold decides."""
from __future__ import annotations

import bisect
import math
from collections import deque

MIN_SCORES = 32


class ScoreWindow:
    """The last ``size`` scores of one model."""

    def __init__(self, size: int = 256) -> None:
        self._scores: deque[float] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._scores.maxlen or 0

    def __len__(self) -> int:
        return len(self._scores)

    def observe(self, score: float) -> None:
        self._scores.append(score)

    def threshold(self, share: float, fallback: float) -> float:
        """The score at or above which ``share`` of the window lies (the configured
        ``fallback`` while the window is short). Share 0: nothing is escalated (a threshold
        above every score seen)."""
        n = len(self._scores)
        if n < MIN_SCORES:
            return fallback
        ranked = sorted(self._scores)
        wanted = share * n
        k = n - math.floor(wanted + 1e-9)  # the lowest index of the top share
        if k >= n:
            return math.nextafter(ranked[-1], math.inf)
        value = ranked[k]
        # Ties at the threshold: all of them are at or above it, or none. The count nearer
        # the share wins, the smaller one when both are as near (a run of equal scores, say
        # greedy answers at entropy 0, must not send every request to the strong model).
        at_or_above = n - bisect.bisect_left(ranked, value)
        above = n - bisect.bisect_right(ranked, value)
        if abs(at_or_above - wanted) < abs(above - wanted):
            return value
        return math.nextafter(value, math.inf)


class ScoreWindows:
    """Each model's window, kept across reloads (a model's scores stay its own)."""

    def __init__(self) -> None:
        self._windows: dict[str, ScoreWindow] = {}

    def of(self, model: str, size: int) -> ScoreWindow:
        window = self._windows.get(model)
        if window is None or window.size != size:
            window = self._windows[model] = ScoreWindow(size)
        return window
