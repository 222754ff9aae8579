"""The balancer and the circuit breaker: pure, by tables."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from lkn.fleet.balance import Backend, order
from lkn.fleet.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerPolicy

THREE = [Backend("a"), Backend("b"), Backend("c")]


@pytest.mark.parametrize("turn, expected", [(0, "abc"), (1, "bca"), (2, "cab"), (3, "abc")])
def test_round_robin_rotates(turn: int, expected: str) -> None:
    assert "".join(order("round_robin", THREE, turn=turn, rng=random.Random(0))) == expected


def test_least_connections_prefers_the_idle() -> None:
    busy = [Backend("a", in_flight=3), Backend("b", in_flight=0), Backend("c", in_flight=1)]
    assert order("least_connections", busy, turn=0, rng=random.Random(0)) == ["b", "c", "a"]


def test_weighted_follows_the_weights() -> None:
    rng = random.Random(7)
    firsts = Counter(order("weighted", [Backend("a", 3), Backend("b", 1)], turn=0, rng=rng)[0]
                     for _ in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80  # 3 : 1


def test_random_is_a_permutation() -> None:
    got = order("random", THREE, turn=0, rng=random.Random(1))
    assert sorted(got) == ["a", "b", "c"]


def test_sticky_keeps_a_key_on_its_backend_and_moves_only_the_lost_share() -> None:
    keys = [f"user-{i}" for i in range(600)]
    before = {k: order("sticky", THREE, turn=0, rng=random.Random(0), key=k)[0] for k in keys}
    again = {k: order("sticky", THREE, turn=5, rng=random.Random(9), key=k)[0] for k in keys}
    assert before == again  # same key, same backend, whatever the turn
    after = {k: order("sticky", THREE[:2], turn=0, rng=random.Random(0), key=k)[0]
             for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "c" for k in moved)  # only c's keys moved
    assert 150 < sum(1 for k in keys if before[k] == "c") < 250  # about a third each
    no_key = order("sticky", THREE, turn=1, rng=random.Random(0))
    assert no_key == ["b", "c", "a"]  # round robin


P = BreakerPolicy(failures=3, open_s=30, successes=2)


@pytest.mark.parametrize("events, now, state", [
    ([], 0, CLOSED),
    ([False, False], 1, CLOSED),
    ([False, False, False], 1, OPEN),                 # 3 in a row
    ([False, False, True, False, False], 1, CLOSED),  # a success resets the count
    ([False] * 3, 31, HALF_OPEN),                     # after open_s
    ([False] * 3 + ["t31", True], 32, HALF_OPEN),     # one success is not enough
    ([False] * 3 + ["t31", True, True], 33, CLOSED),  # two close it
    ([False] * 3 + ["t31", False], 32, OPEN),         # a half-open failure opens it again
])
def test_breaker_states(events: list[object], now: float, state: str) -> None:
    b, t = Breaker(), 0.0
    for e in events:
        if isinstance(e, str):
            t = float(e[1:])
            continue
        b = b.record(bool(e), P, t)
    assert b.current(P, now) == state
    assert b.allows(P, now) is (state != OPEN)


def test_breaker_counts_trips_and_says_when_it_closes() -> None:
    b = Breaker()
    for _ in range(3):
        b = b.record(False, P, 10.0)
    assert b.describe(P, 20.0) == {"state": OPEN, "consecutive_failures": 0, "trips": 1,
                                   "closes_in_s": 20.0}
    assert b.record(False, P, 15.0) is b  # a late failure while open changes nothing
