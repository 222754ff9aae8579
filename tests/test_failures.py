"""The restart policy's bookkeeping (lkn.fleet.failures), as tables of events."""
from __future__ import annotations

import pytest

from lkn.fleet.failures import (STABLE_S, FailureHistory, FailurePolicy, record_failure,
                                record_ready, record_served)

POLICY = FailurePolicy(base_s=1.0, cap_s=30.0, max_failures=5, failed_retry_s=60.0)


def play(events: list[tuple[str, float]]) -> FailureHistory:
    """Apply ("ready" | "served" | "fail", at) events in order."""
    h = FailureHistory()
    for event, at in events:
        if event == "ready":
            h = record_ready(h, POLICY, at)
        elif event == "served":
            h = record_served(h)
        else:
            h = record_failure(h, "boom", at)
    return h


@pytest.mark.parametrize("events, consecutive, retry_at", [
    # failed starts in a row: each one more, the backoff doubles
    ([("fail", 0), ("fail", 1), ("fail", 3)], 3, 3 + 4.0),
    # crashes right after ready, nothing answered: a crash loop, counted on
    ([("ready", 0), ("fail", 1), ("ready", 2), ("fail", 3), ("ready", 5), ("fail", 6)],
     3, 6 + 4.0),
    # an engine killed while in service, again and again: each one a first crash
    ([("ready", 0), ("served", 0), ("fail", 1), ("ready", 2), ("served", 2), ("fail", 3),
      ("ready", 5), ("served", 5), ("fail", 6)], 1, 6 + 1.0),
    # up for STABLE_S without answering: a new count too
    ([("fail", 0), ("fail", 1), ("ready", 2), ("fail", 2 + STABLE_S)], 1, 2 + STABLE_S + 1),
    # an answer counts only since the last ready: a served mark before a failed start
    # does not make the failed starts after it look proven
    ([("ready", 0), ("served", 0), ("fail", 1), ("served", 1), ("fail", 2), ("fail", 3)],
     3, 3 + 4.0),
    # five in a row: FAILED, one more try after failed_retry_s
    ([("fail", t) for t in range(5)], 5, 4 + 60.0),
])
def test_failures_count_crash_loops_not_crashes_in_service(
        events: list[tuple[str, float]], consecutive: int, retry_at: float) -> None:
    h = play(events)
    assert (h.consecutive, h.retry_at(POLICY)) == (consecutive, retry_at)


def test_a_start_clears_failed_but_not_the_count() -> None:
    h = play([("fail", t) for t in range(5)] + [("ready", 70)])
    assert not h.failed(POLICY) and h.consecutive == 4 and not h.served
