"""Circuit breaker per backend (pure: the caller passes the time; tested by tables).

CLOSED: requests flow; ``failures`` consecutive failures open it. OPEN: the backend is skipped
for ``open_s``. HALF_OPEN (after that): requests flow again as probes; ``successes``
consecutive successes close it, one failure opens it again. sgl-router's defaults: 5 failures,
30 s, 2 successes. A failure is a connect error, a timeout or a 5xx before the first byte (the
handler decides); a 4xx is the client's problem, a success for the backend.
"""
from __future__ import annotations

from dataclasses import dataclass

from lkn.config import BreakerPolicy

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class Breaker:
    state: str = CLOSED
    failures: int = 0     # consecutive, while closed
    successes: int = 0    # consecutive, while half-open
    opened_at: float = 0.0
    trips: int = 0        # times it opened

    def current(self, policy: BreakerPolicy, now: float) -> str:
        if self.state == OPEN and now - self.opened_at >= policy.open_s:
            return HALF_OPEN
        return self.state

    def allows(self, policy: BreakerPolicy, now: float) -> bool:
        return self.current(policy, now) != OPEN

    def record(self, ok: bool, policy: BreakerPolicy, now: float) -> Breaker:
        state = self.current(policy, now)
        if state == OPEN:
            return self  # a request that was already under way when it opened
        if ok:
            if state == HALF_OPEN:
                if self.successes + 1 >= policy.successes:
                    return Breaker(trips=self.trips)
                return Breaker(HALF_OPEN, 0, self.successes + 1, self.opened_at, self.trips)
            return Breaker(trips=self.trips)
        if state == HALF_OPEN or self.failures + 1 >= policy.failures:
            return Breaker(OPEN, 0, 0, now, self.trips + 1)
        return Breaker(CLOSED, self.failures + 1, 0, 0.0, self.trips)

    def describe(self, policy: BreakerPolicy, now: float) -> dict[str, object]:
        state = self.current(policy, now)
        return {"state": state, "consecutive_failures": self.failures, "trips": self.trips,
                "closes_in_s": round(max(0.0, self.opened_at + policy.open_s - now), 1)
                if state == OPEN else None}
