"""What the planner learns from what happens (pure: the caller passes the time).

- ``ArrivalRates``: each model's requests per second by client key over a sliding window, each
  counted by its weight (``planner.weight`` of its priority) when it queues for an engine (the
  traffic that asks for a model, whether or not it is served yet).
- ``SwapCost``: one engine's start and stop durations, each the mean of its recent ones: what a
  swap to or from it costs. Before an engine's first start (stop), ``prior``: the mean of the
  box's other engines' recent ones (the box's disk, PCIe and card set most of it), and before
  any engine has started, the configured ``swap_cost_s`` (a stop: a tenth of it).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

RATE_WINDOW_S = 300.0
MIN_SPAN_S = 30.0   # a rate is never taken over less: one request right after start is no storm
SAMPLES = 5         # a swap cost is the mean of this many recent starts (stops)


class ArrivalRates:
    def __init__(self, *, window_s: float = RATE_WINDOW_S, started: float = 0.0) -> None:
        self.window_s = window_s
        self._started = started
        self._times: dict[str, collections.deque[tuple[float, float, str]]] = {}
        # running sums per model and key (count, weight): a decision reads them, never the ring
        self._sums: dict[str, dict[str, list[float]]] = {}

    def arrive(self, model: str, now: float, weight: float = 1.0, key: str = "") -> None:
        ring = self._times.setdefault(model, collections.deque())
        ring.append((now, weight, key))
        total = self._sums.setdefault(model, {}).setdefault(key, [0.0, 0.0])
        total[0] += 1
        total[1] += weight
        self._trim(model, now)

    def _trim(self, model: str, now: float) -> None:
        ring, sums = self._times[model], self._sums[model]
        while ring and ring[0][0] <= now - self.window_s:
            _, weight, key = ring.popleft()
            total = sums[key]
            total[0] -= 1
            total[1] -= weight
            if total[0] <= 0:  # (and no float residue survives the key)
                del sums[key]
        if not ring:
            del self._times[model], self._sums[model]

    def rates(self, now: float) -> dict[str, dict[str, float]]:
        """Weighted requests per second of every model seen in the window, by client key."""
        span = max(min(self.window_s, now - self._started), MIN_SPAN_S)
        for model in list(self._times):
            self._trim(model, now)
        return {model: {key: max(0.0, total[1]) / span for key, total in sums.items()}
                for model, sums in self._sums.items()}


@dataclass
class SwapCost:
    """An engine's recent start and stop durations; before the first, the caller's default."""
    starts: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=SAMPLES))
    stops: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=SAMPLES))

    def start_s(self, default_s: float) -> float:
        return sum(self.starts) / len(self.starts) if self.starts else default_s

    def stop_s(self, default_s: float) -> float:
        return sum(self.stops) / len(self.stops) if self.stops else default_s

    def describe(self) -> dict[str, float | None]:
        """The learned means, None before the first start (stop)."""
        return {"start_s": round(self.start_s(0.0), 2) if self.starts else None,
                "stop_s": round(self.stop_s(0.0), 2) if self.stops else None}

    def started(self, seconds: float) -> None:
        if seconds >= 0:
            self.starts.append(seconds)

    def stopped(self, seconds: float) -> None:
        if seconds >= 0:
            self.stops.append(seconds)


@dataclass(frozen=True)
class Prior:
    """What starting (stopping) an engine that never did costs, as far as the box knows."""
    start_s: float
    stop_s: float


def prior(costs: Iterable[SwapCost], default_s: float) -> Prior:
    costs = list(costs)
    starts = [s for c in costs for s in c.starts]
    stops = [s for c in costs for s in c.stops]
    return Prior(sum(starts) / len(starts) if starts else default_s,
                 sum(stops) / len(stops) if stops else default_s / 10)
