"""Table tests for the pure scheduler: feed it engines and waiters, check the actions."""
from __future__ import annotations

import pytest

from lkn.fleet.planner import BATCH, HOLD, INTERACTIVE, OUTRANK_RESIDENCE, RESIDENCE
from lkn.fleet.scheduler import (ASLEEP, READY, STARTING, STOPPING, Grant, Option, Recheck, Slot,
                                 Start, Stop, Waiter, admit, decide)

A512 = Option("a@512", 512, 1000)
A2048 = Option("a@2048", 2048, 3000)
B = Option("b@1024", 1024, 5500)
C = Option("c@1024", 1024, 2000)


def slot(option: Option, state: str = READY, in_flight: int = 0, last_used: float = 0.0,
         retired: bool = False, capacity: int = 4, pinned: bool = False) -> Slot:
    return Slot(option.key, option.key.split("@")[0], option.ctx, option.vram_mb, state,
                in_flight, last_used, retired, capacity, pinned)


def waiter(i: int, *options: Option, arrived: float = 0.0) -> Waiter:
    return Waiter(i, options[0].key.split("@")[0], tuple(options), arrived)


CASES = [
    # (name, slots, waiters, budget, max_engines, now, expected actions)
    ("cold start picks the smallest variant",
     [], [waiter(1, A512, A2048)], 8000, 0, 0.0, [Start("a@512")]),
    ("ready engine is granted",
     [slot(A512)], [waiter(1, A512, A2048)], 8000, 0, 0.0, [Grant(1, "a@512")]),
    ("running larger variant is reused for a short prompt (no swap)",
     [slot(A2048)], [waiter(1, A512, A2048)], 8000, 0, 0.0, [Grant(1, "a@2048")]),
    ("a long prompt cannot use the small running variant: start the larger one beside it",
     [slot(A512)], [waiter(1, A2048)], 8000, 0, 0.0, [Start("a@2048")]),
    ("joins an engine that is already starting",
     [slot(A512, STARTING)], [waiter(1, A512, A2048)], 8000, 0, 0.0, []),
    ("two engines fit the budget together: no eviction",
     [slot(A512)], [waiter(1, C)], 8000, 0, 0.0, [Start("c@1024")]),
    ("does not fit: evict the idle engine first, start later",
     [slot(A2048)], [waiter(1, B)], 8000, 0, 0.0, [Stop("a@2048")]),
    ("a pinned engine is never evicted: the unpinned one goes, even if used more recently",
     [slot(A512, pinned=True, last_used=1.0), slot(C, last_used=5.0)], [waiter(1, B)],
     8000, 2, 9.0, [Stop("c@1024")]),
    ("only pinned engines stand in the way: the request waits (nothing is stopped)",
     [slot(A2048, pinned=True)], [waiter(1, B)], 8000, 0, 9.0, []),
    ("a remote upstream takes no engine slot: nothing is evicted for it",
     [slot(A512)], [waiter(1, Option("r@8192", 8192, 0, local=False))], 8000, 1, 0.0,
     [Start("r@8192")]),
    ("a running remote upstream is not evicted for a local engine",
     [Slot("r@8192", "r", 8192, 0, READY, local=False)], [waiter(1, A512)], 8000, 1, 0.0,
     [Start("a@512")]),
    ("a retired pinned engine still stops once idle (its config changed)",
     [slot(A2048, pinned=True, retired=True)], [], 8000, 0, 0.0, [Stop("a@2048", "retired")]),
    ("never evicts an engine with requests in flight",
     [slot(A2048, in_flight=1)], [waiter(1, B)], 8000, 0, 0.0, []),
    ("eviction order is least recently used first",
     [slot(A512, last_used=5.0), slot(C, last_used=1.0)], [waiter(1, B)], 8000, 0, 10.0,
     [Stop("c@1024")]),
    ("evicts as many idle engines as needed",
     [slot(A512, last_used=5.0), slot(C, last_used=1.0)], [waiter(1, Option("d@1", 1, 7500))],
     8000, 0, 10.0, [Stop("c@1024"), Stop("a@512")]),
    ("stopping engines still hold memory: wait",
     [slot(A2048, STOPPING)], [waiter(1, B)], 8000, 0, 0.0, []),
    ("max_engines=1 forces a swap even when VRAM would fit",
     [slot(A512)], [waiter(1, C)], 8000, 1, 0.0, [Stop("a@512")]),
    ("collation: queued requests for the ready model are served before the swap",
     [slot(A512)], [waiter(1, B, arrived=0.0), waiter(2, A512, arrived=1.0)], 6000, 0, 2.0,
     [Grant(2, "a@512")]),
    ("wait bound: an overdue waiter blocks new grants to the engine it needs gone",
     [slot(A512, in_flight=1)], [waiter(1, B, arrived=0.0), waiter(2, A512, arrived=1.0)],
     6000, 0, 31.0, []),
    ("wait bound: once drained, the overdue waiter's swap happens",
     [slot(A512)], [waiter(1, B, arrived=0.0), waiter(2, A512, arrived=1.0)], 6000, 0, 31.0,
     [Stop("a@512")]),
    ("before the bound the busy engine keeps serving",
     [slot(A512, in_flight=1)], [waiter(1, B, arrived=0.0), waiter(2, A512, arrived=1.0)],
     6000, 0, 29.0, [Grant(2, "a@512")]),
    ("an overdue waiter does not block engines it does not need gone",
     [slot(A512, in_flight=1), slot(C, in_flight=1, last_used=5.0)],
     [waiter(1, Option("d@1", 1, 5500), arrived=0.0), waiter(2, A512, arrived=1.0),
      waiter(3, C, arrived=2.0)],
     8000, 0, 31.0, [Grant(3, "c@1024")]),
    ("retired engine (reload) is stopped once idle and gets no new requests",
     [slot(A512, retired=True)], [waiter(1, A512)], 8000, 0, 0.0, [Stop("a@512", "retired")]),
    ("retired engine with work in flight drains first",
     [slot(A512, retired=True, in_flight=1)], [waiter(1, A512)], 8000, 0, 0.0, []),
    ("an asleep engine is woken (started) for its request",
     [slot(A512, ASLEEP)], [waiter(1, A512)], 8000, 0, 0.0, [Start("a@512")]),
    ("an asleep engine's memory is free for others",
     [slot(B, ASLEEP)], [waiter(1, A2048)], 8000, 0, 0.0, [Start("a@2048")]),
    ("requests older than the overdue waiter are still served (no ping-pong of evictions)",
     [slot(A512)], [waiter(1, A512, arrived=0.0), waiter(2, B, arrived=1.0),
                    waiter(3, A512, arrived=2.0)], 6000, 0, 100.0, [Grant(1, "a@512")]),
    ("a full engine gets no more than its capacity; the rest wait in lkn's queue, oldest first",
     [slot(A512, in_flight=1, capacity=2)],
     [waiter(1, A512, arrived=0.0), waiter(2, A512, arrived=1.0)], 8000, 0, 2.0,
     [Grant(1, "a@512")]),
    ("a full engine is not started twice for its waiters",
     [slot(A512, in_flight=1, capacity=1)], [waiter(1, A512, A2048)], 8000, 0, 2.0, []),
    ("a waiter for a full engine is not overdue: it is served without a swap",
     [slot(A512, in_flight=1, capacity=1)],
     [waiter(1, A512, arrived=0.0), waiter(2, B, arrived=1.0)], 6000, 0, 100.0, []),
    ("FIFO: the first waiter's start goes first; later ones wait for it",
     [], [waiter(1, B, arrived=0.0), waiter(2, A2048, arrived=1.0)], 6000, 0, 2.0,
     [Start("b@1024")]),
]


@pytest.mark.parametrize("name, slots, waiters, budget, max_engines, now, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_decide(name: str, slots: list[Slot], waiters: list[Waiter], budget: int,
                max_engines: int, now: float, expected: list[object]) -> None:
    assert decide(slots, waiters, budget_mb=budget, max_engines=max_engines, max_wait_s=30.0,
                  now=now) == expected


def test_an_eviction_names_the_engine_it_makes_room_for() -> None:
    [stop] = decide([slot(A2048)], [waiter(1, B)], budget_mb=8000, max_engines=0,
                    max_wait_s=30.0, now=0.0)
    assert isinstance(stop, Stop) and (stop.key, stop.for_key) == ("a@2048", "b@1024")


def test_an_overdue_waiter_blocks_even_when_it_is_not_first_in_line() -> None:
    # the overdue waiter blocks A; a later request for A waits behind it instead of being served
    slots = [slot(A512, in_flight=2)]
    waiters = [waiter(1, B, arrived=0.0)] + [waiter(i, A512, arrived=float(i)) for i in range(2, 6)]
    assert decide(slots, waiters, budget_mb=6000, max_engines=0, max_wait_s=30, now=40) == []


def simulate(arrivals: list[tuple[float, Option]], service_s: float, budget: int,
             max_wait_s: float) -> dict[int, float]:
    """A tiny event loop over decide(): start/stop are instant, requests take service_s."""
    t = 0.0
    slots: dict[str, Slot] = {}
    queue: dict[int, Waiter] = {}
    finish: list[tuple[float, str]] = []
    waited: dict[int, float] = {}
    pending = [(a, i, o) for i, (a, o) in enumerate(arrivals)]
    while pending or queue or finish:
        for a, i, o in [p for p in pending if p[0] <= t]:
            queue[i] = Waiter(i, o.key.split("@")[0], (o,), a)
            pending.remove((a, i, o))
        for end, key in [f for f in finish if f[0] <= t]:
            finish.remove((end, key))
            s = slots[key]
            slots[key] = Slot(s.key, s.model, s.ctx, s.vram_mb, s.state, s.in_flight - 1, t,
                              capacity=2)
        for action in decide(list(slots.values()), list(queue.values()), budget_mb=budget,
                             max_engines=0, max_wait_s=max_wait_s, now=t):
            if isinstance(action, Grant):
                w = queue.pop(action.waiter)
                waited[w.id] = t - w.arrived
                s = slots[action.key]
                slots[action.key] = Slot(s.key, s.model, s.ctx, s.vram_mb, s.state,
                                         s.in_flight + 1, t, capacity=2)
                finish.append((t + service_s, action.key))
            elif isinstance(action, Start):
                w = next(w for w in queue.values() if w.options[0].key == action.key)
                o = w.options[0]
                slots[o.key] = Slot(o.key, w.model, o.ctx, o.vram_mb, READY, 0, t, capacity=2)
            elif isinstance(action, Stop):
                del slots[action.key]
        t = round(t + 0.5, 3)
        assert t < 10_000, "simulation did not converge"
    return waited


def test_no_request_starves_behind_a_busy_model() -> None:
    # model A receives a request every second forever-ish; one request for B arrives at t=1
    arrivals = [(float(i), A512) for i in range(0, 200)] + [(1.0, B)]
    waited = simulate(arrivals, service_s=1.5, budget=6000, max_wait_s=10.0)
    b_id = len(arrivals) - 1
    assert waited[b_id] <= 10.0 + 2 * 1.5 + 1.0  # the bound plus draining in-flight work
    assert max(waited.values()) < 60


# The planner's rules. One engine fits at a time; a swap costs 2 s of stop + 8 s of start.
PA = Option("a@512", 512, 1000, start_s=8.0)
PB = Option("b@512", 512, 1000, start_s=8.0)
PC = Option("c@512", 512, 1000, start_s=8.0)
COST = 10.0


def ready(option: Option, *, in_flight: int = 0, capacity: int = 2, since: float = 0.0) -> Slot:
    return Slot(option.key, option.key.split("@")[0], option.ctx, option.vram_mb, READY,
                in_flight, 0.0, capacity=capacity, since=since, stop_s=2.0)


def pw(i: int, option: Option, arrived: float, *, key: str = "",
       priority: float = INTERACTIVE) -> Waiter:
    return Waiter(i, option.key.split("@")[0], (option,), arrived, key=key, priority=priority)


KEEP_A = HOLD * 0.05 * COST * COST  # a's 0.05 weighted arrivals/s, each delayed by the swap

PLANNER_CASES = [
    # (name, slots, waiters, rates, now, expected actions)
    ("an idle engine whose model gets traffic is kept for a fresh request of another model: "
     "held until the pressure (4/s) reaches the keep value",
     [ready(PA)], [pw(1, PB, 100.0, key="ann")], {"a": {"": 0.05}}, 100.0,
     [Recheck(100.0 + KEEP_A / 4)]),
    ("a hold lasts one swap cost at most, however busy the running model is",
     [ready(PA)], [pw(1, PB, 100.0, key="ann")], {"a": {"": 50.0}}, 100.0,
     [Recheck(100.0 + COST)]),
    ("no traffic for the running model: the swap happens at once",
     [ready(PA)], [pw(1, PB, 100.0)], {}, 100.0, [Stop("a@512", for_key="b@512")]),
    ("the hold ends once the waiter's pressure reaches the keep value",
     [ready(PA)], [pw(1, PB, 100.0, key="ann")], {"a": {"": 0.05}}, 100.0 + KEEP_A / 4 + 0.01,
     [Stop("a@512", for_key="b@512")]),
    ("an overdue waiter is never held",
     [ready(PA)], [pw(1, PB, 60.0, key="ann")], {"a": {"": 100.0}}, 90.0,
     [Stop("a@512", for_key="b@512")]),
    ("residence: an overdue waiter does not block an engine with work before it served "
     "RESIDENCE swap costs (at most the bound); its own requests go on",
     [ready(PA, in_flight=1, since=90.0)], [pw(1, PB, 60.0), pw(2, PA, 95.0)], {}, 100.0,
     [Grant(2, "a@512"), Recheck(90.0 + min(RESIDENCE * COST, 30.0))]),
    ("after its residence the engine is blocked: its later requests wait behind the overdue one",
     [ready(PA, in_flight=1, since=50.0)], [pw(1, PB, 60.0), pw(2, PA, 95.0)], {}, 100.0, []),
    ("an interactive request outranks an engine with only batch work: blocked after one swap "
     "cost of residence",
     [ready(PA, in_flight=1, since=85.0)],
     [pw(1, PA, 95.0, priority=BATCH), pw(2, PB, 99.5)], {}, 100.0, []),
    ("... and within it the batch work goes on",
     [ready(PA, in_flight=1, since=95.0)],
     [pw(1, PA, 95.0, priority=BATCH), pw(2, PB, 99.5)], {}, 100.0,
     [Grant(1, "a@512"), Recheck(95.0 + OUTRANK_RESIDENCE * COST)]),
    ("an overdue batch request does not block a fresh interactive one of the engine in its "
     "way (the interactive one is more urgent)",
     [ready(PA, since=0.0)], [pw(1, PB, 65.0, priority=BATCH), pw(2, PA, 99.0)], {}, 100.0,
     [Grant(2, "a@512")]),
    ("a batch request does not outrank interactive work",
     [ready(PA, in_flight=1, since=99.0)],
     [pw(1, PA, 95.0), pw(2, PB, 99.5, priority=BATCH)], {}, 100.0, [Grant(1, "a@512")]),
    ("the running model's arrivals from the waiting key itself hold nothing",
     [ready(PA)], [pw(1, PB, 100.0, key="ann")], {"a": {"ann": 50.0}}, 100.0,
     [Stop("a@512", for_key="b@512")]),
    ("an overdue waiter that nothing can make room for (a pinned engine) does not stop "
     "another overdue one from forcing its swap: a's new request queues behind it",
     [Slot("p@512", "p", 512, 600, READY, pinned=True),
      ready(Option("a@512", 512, 400), in_flight=1, since=0.0)],
     [pw(1, Option("big@512", 512, 900), 0.0), pw(2, Option("b@512", 512, 400), 10.0),
      pw(3, Option("a@512", 512, 400), 95.0)], {}, 100.0, []),
    ("an interactive request that fits now starts before an overdue batch request takes the "
     "room (no swapping back and forth)",
     [], [pw(1, PA, 65.0, priority=BATCH), pw(2, PB, 99.0)], {}, 100.0, [Start("b@512")]),
    ("a remote upstream starts while a forced waiter's room is being made: it takes no room",
     [ready(PA, in_flight=1, since=90.0)],
     [pw(1, PB, 60.0), pw(2, Option("r@8192", 8192, 0, local=False), 99.0)], {}, 100.0,
     [Start("r@8192"), Recheck(90.0 + min(RESIDENCE * COST, 30.0))]),
    ("fair share: round robin between keys (bulk sent three, ann one)",
     [ready(PA)], [pw(1, PA, 1.0, key="bulk"), pw(2, PA, 2.0, key="bulk"),
                   pw(3, PA, 3.0, key="bulk"), pw(4, PA, 4.0, key="ann")], {}, 5.0,
     [Grant(1, "a@512"), Grant(4, "a@512")]),
    ("interactive before older batch within a queue",
     [ready(PA, capacity=1)], [pw(1, PA, 0.0, priority=BATCH), pw(2, PA, 5.0)], {}, 6.0,
     [Grant(2, "a@512")]),
    ("the swap that serves the most waiting work per second goes first",
     [], [pw(1, PB, 0.0), pw(2, PC, 1.0), pw(3, PC, 2.0)], {}, 3.0, [Start("c@512")]),
    ("an interactive waiter's swap goes before more batch work",
     [], [pw(1, PB, 0.0, priority=BATCH), pw(2, PB, 0.0, priority=BATCH), pw(3, PC, 2.0)],
     {}, 3.0, [Start("c@512")]),
]


@pytest.mark.parametrize("name, slots, waiters, rates, now, expected", PLANNER_CASES,
                         ids=[c[0][:60] for c in PLANNER_CASES])
def test_planner_rules(name: str, slots: list[Slot], waiters: list[Waiter],
                       rates: dict[str, dict[str, float]], now: float,
                       expected: list[object]) -> None:
    assert decide(slots, waiters, budget_mb=1000, max_engines=0, max_wait_s=30.0, now=now,
                  rates=rates) == expected


@pytest.mark.parametrize("queued, cap, ok", [(0, 1, True), (63, 64, True), (64, 64, False)])
def test_admit_caps_the_queue(queued: int, cap: int, ok: bool) -> None:
    assert admit(queued, cap) is ok
