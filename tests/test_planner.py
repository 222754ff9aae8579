"""Table tests for the planner's rules (lkn.fleet.planner) and what it learns
(lkn.fleet.learned)."""
from __future__ import annotations

import math

import pytest

from lkn.fleet import planner
from lkn.fleet.learned import MIN_SPAN_S, ArrivalRates, Prior, SwapCost, prior
from lkn.fleet.planner import BATCH, INTERACTIVE, TOP
from lkn.fleet.scheduler_types import Option, Slot, Waiter

OPT = Option("a@512", 512, 1000, start_s=8.0)


def w(i: int, arrived: float = 0.0, *, model: str = "a", key: str = "",
      priority: float = INTERACTIVE) -> Waiter:
    return Waiter(i, model, (OPT,), arrived, key=key, priority=priority)


@pytest.mark.parametrize("priority, age, bound, expected", [
    (INTERACTIVE, 0.0, 30.0, INTERACTIVE),
    (INTERACTIVE, 29.9, 30.0, INTERACTIVE),
    (INTERACTIVE, 30.0, 30.0, 2 * INTERACTIVE),       # overdue: above every fresh request
    (BATCH, 30.0, 30.0, INTERACTIVE),                 # batch at the bound ranks as interactive
    (BATCH, 95.0, 30.0, 3 * INTERACTIVE),
    (BATCH, 1e6, math.inf, BATCH),                    # no bound: no aging
    (BATCH, 1e6, 0.0, BATCH),
])
def test_level(priority: float, age: float, bound: float, expected: float) -> None:
    assert planner.level(w(1, 100.0, priority=priority), 100.0 + age, bound) == expected


def test_weight_doubles_every_25_levels() -> None:
    assert planner.weight(BATCH) == 1
    assert planner.weight(INTERACTIVE) == 4
    assert planner.weight(TOP) == 16
    assert planner.weight(1e9) == planner.weight(planner.MAX_WEIGHT_LEVEL)  # hours: no overflow


@pytest.mark.parametrize("name, waiters, now, expected", [
    ("arrival order among equals", [w(2, 2.0), w(1, 1.0), w(3, 3.0)], 5.0, [1, 2, 3]),
    ("interactive before older batch",
     [w(1, 0.0, priority=BATCH), w(2, 4.0)], 5.0, [2, 1]),
    ("batch that reached the bound ranks with interactive, by arrival",
     [w(1, 0.0, priority=BATCH), w(2, 4.0)], 31.0, [1, 2]),
    ("an old backlog does not push a newcomer of another key behind it: aging lifts to "
     "interactive at most within a queue",
     [w(i, float(i), key="bulk") for i in range(5)] + [w(9, 40.0, key="ann")], 41.0,
     [0, 9, 1, 2, 3, 4]),
    ("lanes aged to one level: an old batch backlog does not push a fresh interactive request "
     "behind it (tags count within their own lane)",
     [Waiter(i, "a", (OPT,), float(i), key="bulk", priority=BATCH, tag=float(i + 1))
      for i in range(5)] + [Waiter(9, "a", (OPT,), 40.0, key="ann", tag=500.0)], 41.0,
     [0, 9, 1, 2, 3, 4]),
    ("lanes aged to one level: an old batch request is not starved by a stream of "
     "interactive ones with lower tag numbers",
     [Waiter(1, "a", (OPT,), 0.0, key="bulk", priority=BATCH, tag=900.0)]
     + [Waiter(i, "a", (OPT,), 30.0 + i, key="ann", tag=float(i)) for i in range(2, 5)], 35.0,
     [1, 2, 3, 4]),
    ("fair-share tags decide within a level: a key just served waits its turn",
     [Waiter(1, "a", (OPT,), 0.0, key="bulk", tag=7.0),
      Waiter(2, "a", (OPT,), 5.0, key="ann", tag=6.0)], 6.0, [2, 1]),
    ("round robin between keys: a key with many queued does not push one with one behind",
     [w(1, 0.0, key="bulk"), w(2, 0.1, key="bulk"), w(3, 0.2, key="bulk"),
      w(4, 0.3, key="ann"), w(5, 0.4, key="bob")], 1.0, [1, 4, 5, 2, 3]),
    ("round robin within a class only: interactive of any key first",
     [w(1, 0.0, key="bulk", priority=BATCH), w(2, 0.1, key="bulk", priority=BATCH),
      w(3, 0.2, key="ann"), w(4, 0.3, key="ann")], 1.0, [3, 4, 1, 2]),
])
def test_order(name: str, waiters: list[Waiter], now: float, expected: list[int]) -> None:
    assert [x.id for x in planner.order(waiters, now, 30.0)] == expected


def test_pressure_and_keep_value() -> None:
    # two interactive waiters (weight 4) who waited 3 s and 1 s: 16 request-seconds
    assert planner.pressure([w(1, 7.0), w(2, 9.0)], 10.0, 30.0) == pytest.approx(16.0)
    # nothing queued, 0.5 weighted arrivals/s, an 8 s swap: 4 arrivals delayed 8 s, x HOLD
    assert planner.keep_value([], 0.5, 8.0, 10.0, 30.0) == pytest.approx(planner.HOLD * 32.0)
    # a queued batch request (weight 1) adds itself
    assert planner.keep_value([w(1, 9.0, priority=BATCH)], 0.0, 8.0, 10.0, 30.0) == \
        pytest.approx(planner.HOLD * 8.0)


@pytest.mark.parametrize("name, waiting, keep, now, expected", [
    ("nothing to keep: no hold", [w(1, 10.0)], 0.0, 10.0, None),
    ("pressure below the keep value: held until it grows to it (4/s)",
     [w(1, 10.0)], 40.0, 10.0, 20.0),
    ("two waiters grow it twice as fast", [w(1, 10.0), w(2, 10.0)], 40.0, 10.0, 15.0),
    ("already enough pressure", [w(1, 0.0)], 40.0, 10.0, None),
    ("the wait bound ends the hold", [w(1, 10.0)], 1e6, 10.0, 40.0),
    ("an overdue waiter is never held", [w(1, 0.0)], 1e9, 30.0, None),
])
def test_held_until(name: str, waiting: list[Waiter], keep: float, now: float,
                    expected: float | None) -> None:
    got = planner.held_until(waiting, keep, now, 30.0)  # (an endless swap: no cap from it)
    assert got == (None if expected is None else pytest.approx(expected))


def test_a_hold_lasts_one_swap_cost_from_the_oldest_waiter_at_most() -> None:
    assert planner.held_until([w(1, 10.0), w(2, 12.0)], 1e6, 12.0, 30.0, 8.0) == 18.0
    assert planner.held_until([w(1, 10.0)], 1e6, 18.0, 30.0, 8.0) is None


def test_a_recheck_at_the_hold_end_finds_it_over() -> None:
    waiting = [w(1, 10.0 / 3)]
    until = planner.held_until(waiting, 41.7, 10.0 / 3, 30.0)
    assert until is not None
    assert planner.held_until(waiting, 41.7, until, 30.0) is None


def test_residence_and_swap_cost() -> None:
    slot = Slot("b@512", "b", 512, 1000, "ready", since=100.0, stop_s=2.0)
    assert planner.swap_cost([slot], OPT) == 10.0
    assert planner.resident_until(slot, 5.0, 30.0) == 100.0 + planner.RESIDENCE * 5.0
    # a swap of minutes keeps an engine no longer than the wait bound
    assert planner.resident_until(slot, 100.0, 30.0) == 130.0
    assert planner.resident_until(slot, 10.0, 30.0, planner.OUTRANK_RESIDENCE) == 110.0


def test_swap_rank() -> None:
    many = [w(1, 0.0, model="m"), w(2, 0.0, model="m")]
    one = [w(3, 0.0, model="o")]
    batch = [w(4, 0.0, model="b", priority=BATCH) for _ in range(5)]
    ranked = sorted([one, many, batch], key=lambda ws: planner.swap_rank(ws, 8.0, 1.0, 30.0))
    assert ranked == [many, one, batch]  # class first, then work per second of swap
    cheap = sorted([many, one], key=lambda ws: planner.swap_rank(
        ws, 8.0 if ws is many else 2.0, 1.0, 30.0))
    assert cheap == [one, many]  # one request behind a 2 s swap beats two behind an 8 s one


@pytest.mark.parametrize("value, ceiling, expected", [
    ("interactive", INTERACTIVE, INTERACTIVE),
    ("batch", INTERACTIVE, BATCH),
    (10, INTERACTIVE, 10.0),
    (90, INTERACTIVE, INTERACTIVE),   # a client may not raise its priority
    (90, TOP, 90.0),                  # an admin key may
    (0.5, INTERACTIVE, 0.5),
])
def test_priority_of(value: object, ceiling: float, expected: float) -> None:
    assert planner.priority_of(value, INTERACTIVE, ceiling) == expected


@pytest.mark.parametrize("value", ["urgent", None, True, -1, 101, float("nan"), [50],
                                   10**400, float("inf")])
def test_priority_of_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        planner.priority_of(value, INTERACTIVE, TOP)


def test_arrival_rates() -> None:
    rates = ArrivalRates(window_s=100.0, started=0.0)
    assert rates.rates(0.0) == {}
    rates.arrive("a", 1.0)
    # one request right after start is not a storm: the span is at least MIN_SPAN_S
    assert rates.rates(2.0) == {"a": {"": pytest.approx(1 / MIN_SPAN_S)}}
    for t in range(10, 60):
        rates.arrive("a", float(t), weight=2.0, key="k")
    rates.arrive("b", 55.0)
    got = rates.rates(60.0)
    assert got["a"] == {"": pytest.approx(1 / 60.0), "k": pytest.approx(50 * 2.0 / 60.0)}
    assert got["b"] == {"": pytest.approx(1 / 60.0)}
    assert planner.rate_of(got, "a") == pytest.approx(101 / 60.0)
    assert planner.rate_of(got, "a", besides={"k"}) == pytest.approx(1 / 60.0)
    assert planner.rate_of(got, "nope") == 0.0
    # past the window the old arrivals are gone, and a model with none left disappears
    assert rates.rates(170.0) == {}


def test_swap_cost_learns_from_recent_starts_and_stops() -> None:
    cost = SwapCost()
    assert cost.start_s(10.0) == 10.0 and cost.stop_s(1.0) == 1.0  # defaults before any
    cost.started(4.0)
    cost.started(6.0)
    cost.stopped(0.5)
    cost.started(-1.0)  # a clock that went backwards is no sample
    assert cost.start_s(10.0) == 5.0 and cost.stop_s(10.0) == 0.5
    for s in range(20):
        cost.started(float(s))
    assert cost.start_s(10.0) == pytest.approx(sum(range(15, 20)) / 5)  # only recent ones


def test_an_engine_that_never_started_costs_what_the_others_did() -> None:
    assert prior([], 10.0) == Prior(10.0, 1.0)  # nothing learned: the config's default
    timed, fresh = SwapCost(), SwapCost()
    timed.started(2.0)
    timed.started(4.0)
    assert prior([timed, fresh], 10.0) == Prior(3.0, 1.0)
    fresh.stopped(0.5)
    assert prior([timed, fresh], 10.0) == Prior(3.0, 0.5)
