"""Traffic statistics over sliding windows: tables with explicit times."""
from __future__ import annotations

import pytest

from lkn.ops.traffic import Finished, TrafficStats, p95


@pytest.mark.parametrize("values, expected", [
    ([], 0.0), ([1.0], 1.0), ([3.0, 1.0, 2.0], 3.0),
    ([float(i) for i in range(1, 101)], 95.0), ([float(i) for i in range(1, 21)], 19.0)])
def test_p95_is_the_nearest_rank(values: list[float], expected: float) -> None:
    assert p95(values) == expected


def stats_with(rows: list[tuple[float, float, bool, int | None]]) -> TrafficStats:
    t = TrafficStats(keep_s=900)
    for at, latency, ok, tokens in rows:
        t.record("m", Finished(at, latency, ok, tokens))
    return t


@pytest.mark.parametrize("now, window, requests, per_minute, success, mean, tps", [
    # four requests at t=10, 50, 100, 130 (s); the one at 50 failed
    (130, 60, 2, 2.0, 1.0, 1.5, 30.0),        # 100 and 130
    (130, 300, 4, 0.8, 0.75, 1.125, 30.0),    # all
    (130, 30, 1, 2.0, 1.0, 2.0, 30.0),        # 130 only: 1 in 30 s = 2/min
    (1500, 300, 0, 0.0, None, None, None),    # long idle: nothing left
])
def test_summary_per_window(now: float, window: float, requests: int, per_minute: float,
                            success: float | None, mean: float | None,
                            tps: float | None) -> None:
    t = stats_with([(10, 1.0, True, 30), (50, 0.5, False, None), (100, 1.0, True, 30),
                    (130, 2.0, True, 60)])
    s = t.summary("m", now, window)
    assert (s["requests"], s["per_minute"], s["success_rate"], s["mean_latency_s"],
            s["tokens_per_s"]) == (requests, per_minute, success, mean, tps)


def test_windows_are_capped_by_retention_and_unknown_models_are_empty() -> None:
    t = stats_with([(10, 1.0, True, 5)])
    assert t.summary("m", 20, 10**6)["window_s"] == 900
    assert t.summary("other", 20, 60)["requests"] == 0
    assert set(t.windows("m", 20)) == {"60s", "300s", "900s"}
    assert t.last_used("m") == 10 and t.last_used("other") is None


def test_old_entries_are_dropped_and_forget_removes_models() -> None:
    t = TrafficStats(keep_s=100, max_per_model=3)
    for at in range(10):
        t.record("m", Finished(float(at), 0.1, True))
    assert t.summary("m", 9, 100)["requests"] == 3  # the cap per model
    t.record("x", Finished(0.0, 0.1, True))
    t.forget({"m"})
    assert t.last_used("x") is None and t.last_used("m") == 9


def test_a_window_the_cap_cut_short_reports_the_span_it_covers() -> None:
    t = TrafficStats(keep_s=900, max_per_model=10)
    for i in range(50):  # 50 requests over 49 s: only the last 10 are kept
        t.record("m", Finished(float(i), 0.1, True))
    s = t.summary("m", 49.0, 300)
    assert s["requests"] == 10 and s["window_s"] == 9.0
    assert s["per_minute"] == round(10 * 60 / 9.0, 3)
