"""Per-key rates and token quotas by tables: the time is passed in (wall-clock epoch seconds),
so window edges and UTC midnight are exact, with no sleeps."""
from __future__ import annotations

from typing import Callable

import pytest

from lkn.errors import QueueFull
from lkn.ops.quota import Ledger, Limits, Ticket, Verdict, duration, to_midnight, utc_day

MIDNIGHT = 1767312000.0  # 2026-01-02 00:00:00 UTC
T = MIDNIGHT + 3600.0    # 01:00 UTC: far from both midnights
NONE = Limits()


def ledger_with(history: list[tuple[float, int]], key: str = "k") -> Ledger:
    """A ledger whose key made a request of ``reserve`` tokens at each time (never settled)."""
    ledger = Ledger()
    for at, reserve in history:
        assert ledger.admit(key, NONE, at, reserve).ok
    return ledger


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.2, "1s"), (12, "12s"), (59.01, "1m0s"), (60, "1m0s"), (61, "1m1s"),
    (3599, "59m59s"), (3600, "1h0m0s"), (3723, "1h2m3s"), (86400, "24h0m0s"), (-5, "0s")])
def test_duration_is_written_as_openai_writes_its_resets(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize("now, day, left", [
    (MIDNIGHT, utc_day(MIDNIGHT), 86400), (MIDNIGHT + 0.5, utc_day(MIDNIGHT), 86400),
    (MIDNIGHT - 0.5, utc_day(MIDNIGHT) - 1, 1), (MIDNIGHT - 10, utc_day(MIDNIGHT) - 1, 10),
    (T, utc_day(MIDNIGHT), 86400 - 3600)])
def test_utc_days_and_seconds_to_midnight(now: float, day: int, left: int) -> None:
    assert (utc_day(now), to_midnight(now)) == (day, left)


@pytest.mark.parametrize("history, limit, now, ok, retry, remaining", [
    ([T, T + 1], 3, T + 2, True, 0, "0"),              # the third of three passes: exactly at limit
    ([T, T + 1, T + 2], 3, T + 3, False, 57, "0"),     # the fourth waits for the one at T
    ([T, T + 1, T + 2], 3, T + 59.5, False, 1, "0"),   # half a second left: at least 1
    ([T, T + 1, T + 2], 3, T + 60, True, 0, "0"),      # T left the window at exactly T + 60
    ([T, T + 1, T + 2], 3, T + 61.5, True, 0, "1"),    # T and T + 1 left
    ([T + i for i in range(5)], 3, T + 10, False, 52, "0"),  # limit lowered: 3 must leave
    ([], 1, T, True, 0, "0"),
])
def test_requests_per_minute(history: list[float], limit: int, now: float, ok: bool,
                             retry: int, remaining: str) -> None:
    ledger = ledger_with([(at, 0) for at in history])
    verdict = ledger.admit("k", Limits(requests_per_minute=limit), now)
    assert (verdict.ok, verdict.retry_after_s) == (ok, retry)
    assert verdict.reason == (None if ok else "requests_per_minute")
    assert verdict.headers["x-ratelimit-remaining-requests"] == remaining
    assert (verdict.ticket is not None) == ok


@pytest.mark.parametrize("history, reserve, now, ok, retry, too_large", [
    ([(T, 60)], 40, T + 1, True, 0, False),        # fills the limit exactly
    ([(T, 60)], 41, T + 1, False, 59, False),      # one over: wait for the 60 at T to leave
    ([(T, 100)], 0, T + 1, False, 59, False),      # nothing left: even a count-less request waits
    ([(T, 99)], 0, T + 1, True, 0, False),         # one token left is enough for no reservation
    ([(T, 100)], 0, T + 60, True, 0, False),       # the window edge: T's tokens left at T + 60
    ([(T, 30), (T + 10, 30), (T + 20, 30)], 50, T + 30, False, 40, False),  # two must leave
    ([(T, 30), (T + 10, 30), (T + 20, 30)], 10, T + 30, True, 0, False),
    ([], 101, T, False, 60, True),                 # larger than the limit: can never fit
    ([], 100, T, True, 0, False),
])
def test_tokens_per_minute(history: list[tuple[float, int]], reserve: int, now: float, ok: bool,
                           retry: int, too_large: bool) -> None:
    verdict = ledger_with(history).admit("k", Limits(tokens_per_minute=100), now, reserve)
    assert (verdict.ok, verdict.retry_after_s, verdict.too_large) == (ok, retry, too_large)
    assert verdict.reason == (None if ok else "tokens_per_minute")


@pytest.mark.parametrize("history, reserve, now, ok, retry, too_large", [
    ([(T, 900)], 100, T + 120, True, 0, False),
    ([(T, 900)], 101, T + 120, False, 86400 - 3720, False),       # until UTC midnight
    ([(T, 1000)], 0, T + 7200, False, 86400 - 10800, False),      # used up: no minute helps
    ([(MIDNIGHT - 0.5, 1000)], 0, MIDNIGHT - 0.25, False, 1, False),  # a quarter second: 1
    ([(MIDNIGHT - 0.5, 1000)], 500, MIDNIGHT, True, 0, False),    # reset at midnight exactly
    ([(MIDNIGHT - 3600, 1000)], 1000, MIDNIGHT + 1, True, 0, False),
    ([], 1001, T, False, 86400 - 3600, True),
])
def test_tokens_per_day(history: list[tuple[float, int]], reserve: int, now: float, ok: bool,
                        retry: int, too_large: bool) -> None:
    verdict = ledger_with(history).admit("k", Limits(tokens_per_day=1000), now, reserve)
    assert (verdict.ok, verdict.retry_after_s, verdict.too_large) == (ok, retry, too_large)
    assert verdict.reason == (None if ok else "tokens_per_day")


@pytest.mark.parametrize("limits, reason, retry", [
    # the history: 3 requests at T, T+1, T+2 of 40 tokens each; now T + 3, reserve 40
    (Limits(requests_per_minute=3, tokens_per_minute=100), "tokens_per_minute", 58),
    (Limits(requests_per_minute=3, tokens_per_day=150), "tokens_per_day", 86400 - 3603),
    (Limits(requests_per_minute=3, tokens_per_minute=1000), "requests_per_minute", 57),
    (Limits(requests_per_minute=4, tokens_per_minute=1000, tokens_per_day=1000), None, 0),
])
def test_the_longest_wait_of_all_refusing_limits_is_answered(
        limits: Limits, reason: str | None, retry: int) -> None:
    verdict = ledger_with([(T, 40), (T + 1, 40), (T + 2, 40)]).admit("k", limits, T + 3, 40)
    assert (verdict.reason, verdict.retry_after_s, verdict.ok) == (reason, retry, reason is None)


def test_a_refused_request_is_not_counted() -> None:
    ledger = ledger_with([(T, 0)])
    limits = Limits(requests_per_minute=1, tokens_per_minute=10)
    for _ in range(5):
        assert not ledger.admit("k", limits, T + 1, 5).ok
    assert ledger.snapshot("k", limits, T + 1)["requests_per_minute"]["used"] == 1
    assert ledger.snapshot("k", limits, T + 1)["tokens_per_minute"]["used"] == 0
    assert ledger.admit("k", limits, T + 60, 5).ok


def test_keys_are_counted_apart() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=1)
    assert ledger.admit("alice", limits, T).ok
    assert not ledger.admit("alice", limits, T).ok
    assert ledger.admit("bob", limits, T).ok


@pytest.mark.parametrize("limits, history, now, headers", [
    (NONE, [(T, 5)], T + 1, {}),
    (Limits(requests_per_minute=10), [(T, 5)], T + 1,
     {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "8",
      "x-ratelimit-reset-requests": "1m0s"}),     # after counting this one, at T + 1
    (Limits(tokens_per_minute=100), [(T, 30)], T + 12,
     {"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "60",
      "x-ratelimit-reset-tokens": "1m0s"}),       # 30 + this request's 10
    (Limits(tokens_per_minute=100, tokens_per_day=1000), [(T - 3000, 950)], T,
     {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "40",
      "x-ratelimit-reset-tokens": "23h0m0s"}),    # the day is the tighter
    (Limits(tokens_per_minute=100, tokens_per_day=1000), [(T - 3000, 10)], T,
     {"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "90",
      "x-ratelimit-reset-tokens": "1m0s"}),       # the minute is the tighter
])
def test_headers_name_only_the_limits_that_are_set(
        limits: Limits, history: list[tuple[float, int]], now: float,
        headers: dict[str, str]) -> None:
    verdict = ledger_with(history).admit("k", limits, now, 10)
    assert verdict.ok and verdict.headers == headers


def test_headers_of_a_refusal_show_the_state_without_it() -> None:
    ledger = ledger_with([(T, 0), (T + 30, 0)])
    verdict = ledger.admit("k", Limits(requests_per_minute=2), T + 45)
    assert verdict.headers == {"x-ratelimit-limit-requests": "2",
                               "x-ratelimit-remaining-requests": "0",
                               "x-ratelimit-reset-requests": "45s"}
    assert verdict.retry_after_s == 15


def admitted(ledger: Ledger, now: float, reserve: int) -> Ticket:
    verdict = ledger.admit("k", NONE, now, reserve)
    assert verdict.ticket is not None
    return verdict.ticket


def used(ledger: Ledger, now: float) -> tuple[int, int]:
    snap = ledger.snapshot("k", NONE, now)
    return snap["tokens_per_minute"]["used"], snap["tokens_per_day"]["used"]


@pytest.mark.parametrize("reserve, actual, minute, day", [
    (100, 250, 250, 250),   # settled up: the answer's completion tokens are added
    (100, 40, 40, 40),      # settled down: a prompt cached, or counted high
    (100, None, 100, 100),  # the engine reported nothing (a cut stream): the reservation stays
    (100, 0, 0, 0),         # never reached an engine: refunded
    (0, 75, 75, 75),        # no reservation, charged at the end
    (100, -5, 0, 0),        # nonsense from an engine charges nothing
])
def test_settle_replaces_the_reservation_by_the_real_usage(
        reserve: int, actual: int | None, minute: int, day: int) -> None:
    ledger = ledger_with([(T - 100, 10)])  # out of the minute window, still today
    ticket = admitted(ledger, T, reserve)
    ledger.settle(ticket, actual, T + 5)
    assert used(ledger, T + 5) == (minute, day + 10)


def test_settled_tokens_are_charged_when_the_answer_ended() -> None:
    ledger = Ledger()
    ticket = admitted(ledger, T, 100)
    ledger.settle(ticket, 300, T + 50)           # the reservation at T is replaced
    assert used(ledger, T + 100) == (300, 300)   # T + 50's charge is still in the window
    limits = Limits(tokens_per_minute=400)
    assert ledger.admit("k", limits, T + 100, 101).retry_after_s == 10
    assert used(ledger, T + 110) == (0, 300)     # and leaves it at T + 110


def test_a_long_answer_whose_reservation_left_the_window_is_charged_in_full() -> None:
    ledger = Ledger()
    ticket = admitted(ledger, T, 100)
    ledger.settle(ticket, 300, T + 120)
    assert used(ledger, T + 120) == (300, 300)


def test_settling_twice_charges_once() -> None:
    ledger = Ledger()
    ticket = admitted(ledger, T, 100)
    ledger.settle(ticket, 300, T + 1)
    ledger.settle(ticket, 300, T + 2)
    ledger.settle(ticket, 0, T + 3)
    assert used(ledger, T + 3) == (300, 300)


def test_an_answer_across_midnight_is_charged_to_the_new_day() -> None:
    ledger = Ledger()
    ticket = admitted(ledger, MIDNIGHT - 10, 100)
    assert used(ledger, MIDNIGHT - 5) == (100, 100)
    ledger.settle(ticket, 300, MIDNIGHT + 20)
    assert used(ledger, MIDNIGHT + 20) == (300, 300)  # the old day's counter is gone anyway


def test_a_clock_stepped_back_over_midnight_keeps_the_day() -> None:
    ledger = ledger_with([(MIDNIGHT + 5, 1000)])
    limits = Limits(tokens_per_day=1000)
    assert ledger.admit("k", limits, MIDNIGHT - 5).reason == "tokens_per_day"


def test_a_refund_after_an_upward_settle_does_not_go_negative() -> None:
    ledger = Ledger()
    first, second = admitted(ledger, T, 100), admitted(ledger, T, 100)
    ledger.settle(first, 0, T + 1)
    ledger.settle(second, 0, T + 1)
    assert used(ledger, T + 1) == (0, 0)


@pytest.mark.parametrize("day, minute, requests, now, snap", [
    (5000, 300, 2, T, {"requests_per_minute": 2, "tokens_per_minute": 300,
                       "tokens_per_day": 5000}),
    (5000, 300, 2, T + 60, {"requests_per_minute": 0, "tokens_per_minute": 0,
                            "tokens_per_day": 5000}),   # the restored minute has passed
    (5000, 0, 0, MIDNIGHT + 86399, {"requests_per_minute": 0, "tokens_per_minute": 0,
                                "tokens_per_day": 5000}),
    (-3, -3, -3, T, {"requests_per_minute": 0, "tokens_per_minute": 0, "tokens_per_day": 0}),
])
def test_restore_after_a_restart(day: int, minute: int, requests: int, now: float,
                                 snap: dict[str, int]) -> None:
    ledger = ledger_with([(T - 10, 999)])  # replaced, not added to
    ledger.restore("k", day, minute, T, minute_requests=requests)
    got = ledger.snapshot("k", NONE, now)
    assert {name: row["used"] for name, row in got.items()} == snap


def test_restored_usage_is_enforced_and_resets_at_midnight() -> None:
    ledger = Ledger()
    ledger.restore("k", 1000, 0, MIDNIGHT - 60)
    limits = Limits(tokens_per_day=1000)
    assert ledger.admit("k", limits, MIDNIGHT - 30).reason == "tokens_per_day"
    assert ledger.admit("k", limits, MIDNIGHT).ok


def test_snapshot_reports_used_left_and_reset() -> None:
    ledger = ledger_with([(T, 300), (T + 20, 100)])
    limits = Limits(requests_per_minute=10, tokens_per_day=1000)
    assert ledger.snapshot("k", limits, T + 30) == {
        "requests_per_minute": {"limit": 10, "used": 2, "left": 8, "reset_s": 50},
        "tokens_per_minute": {"limit": None, "used": 400, "left": None, "reset_s": 50},
        "tokens_per_day": {"limit": 1000, "used": 400, "left": 600,
                           "reset_s": 86400 - 3630}}
    assert ledger.snapshot("new", limits, T)["tokens_per_day"] == {
        "limit": 1000, "used": 0, "left": 1000, "reset_s": 0}


def test_forget_drops_removed_keys_and_their_tickets_settle_harmlessly() -> None:
    ledger = Ledger()
    ticket = admitted(ledger, T, 100)
    ledger.admit("other", NONE, T, 7)
    ledger.forget({"other"})
    ledger.settle(ticket, 500, T + 1)
    assert used(ledger, T + 1) == (0, 0)
    assert ledger.snapshot("other", NONE, T + 1)["tokens_per_day"]["used"] == 7


@pytest.mark.parametrize("verdict_of, code, retry_header, should_retry", [
    (lambda ledger: ledger.admit("k", Limits(requests_per_minute=1), T + 1),
     "requests_per_minute", "59", "true"),
    (lambda ledger: ledger.admit("k", Limits(tokens_per_minute=5), T + 1, 50),
     "tokens_per_minute", "60", "false"),
])
def test_a_refusal_becomes_a_429_with_retry_after(verdict_of: Callable[[Ledger], Verdict],
                                                  code: str, retry_header: str,
                                                  should_retry: str) -> None:
    verdict = verdict_of(ledger_with([(T, 0)]))
    error = verdict.error("alice")
    assert isinstance(error, QueueFull) and error.status == 429
    assert error.code == code and "'alice'" in error.message and code in error.message
    headers = error.headers()
    assert headers["Retry-After"] == retry_header
    assert headers["x-should-retry"] == should_retry
    assert error.body()["error"]["type"] == "rate_limit_error"
