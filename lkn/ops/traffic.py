"""Traffic statistics per model over sliding windows (pure: the caller passes the time).

Every finished request is kept for ``keep_s`` (at most ``max_per_model`` per model, the oldest go
first): its end time, latency, whether it succeeded and the completion tokens the engine
reported. ``summary(model, now, window_s)`` answers for any window up to ``keep_s``: requests,
rate per minute, success rate, mean and p95 latency, and tokens per second (completion tokens
over the time those requests took).
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any

DEFAULT_WINDOWS = (60, 300, 900)


@dataclass(frozen=True)
class Finished:
    at: float
    latency_s: float
    ok: bool
    completion_tokens: int | None = None


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class TrafficStats:
    def __init__(self, *, keep_s: float = 3600.0, max_per_model: int = 20000) -> None:
        self.keep_s = keep_s
        self._max = max_per_model
        self._by_model: dict[str, collections.deque[Finished]] = {}
        self._last: dict[str, float] = {}

    def record(self, model: str, finished: Finished) -> None:
        ring = self._by_model.get(model)
        if ring is None:
            ring = self._by_model[model] = collections.deque(maxlen=self._max)
        ring.append(finished)
        self._last[model] = max(self._last.get(model, finished.at), finished.at)
        self._trim(ring, finished.at)

    def _trim(self, ring: collections.deque[Finished], now: float) -> None:
        while ring and ring[0].at < now - self.keep_s:
            ring.popleft()

    def last_used(self, model: str) -> float | None:
        return self._last.get(model)

    def forget(self, keep: set[str]) -> None:
        """Drop the statistics of models no longer configured."""
        for model in [m for m in self._by_model if m not in keep]:
            del self._by_model[model]
            self._last.pop(model, None)

    def summary(self, model: str, now: float, window_s: float) -> dict[str, Any]:
        window_s = min(max(window_s, 1e-9), self.keep_s)
        ring = self._by_model.get(model, collections.deque())
        self._trim(ring, now)
        done = [f for f in ring if f.at > now - window_s]
        if ring and len(ring) == ring.maxlen and ring[0].at > now - window_s:
            # The cap dropped requests of this window: the rate is over the span still kept.
            window_s = max(now - ring[0].at, 1e-9)
        latencies = [f.latency_s for f in done]
        ok = sum(1 for f in done if f.ok)
        counted = [f for f in done if f.ok and f.completion_tokens is not None]
        busy = sum(f.latency_s for f in counted)
        tokens = sum(f.completion_tokens or 0 for f in counted)
        return {
            "window_s": round(window_s, 3),
            "requests": len(done),
            "per_minute": round(len(done) * 60.0 / window_s, 3),
            "success_rate": round(ok / len(done), 4) if done else None,
            "mean_latency_s": round(sum(latencies) / len(latencies), 4) if done else None,
            "p95_latency_s": round(p95(latencies), 4) if done else None,
            "tokens_per_s": round(tokens / busy, 2) if busy > 0 else None,
        }

    def windows(self, model: str, now: float,
                windows: tuple[float, ...] = DEFAULT_WINDOWS) -> dict[str, dict[str, Any]]:
        return {f"{w:g}s": self.summary(model, now, w) for w in windows}
