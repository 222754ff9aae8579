"""The wait queue and its timer rule by tables: expiry, failing stranded waiters, withdrawal,
re-planning, and when the manager must wake up. Futures on the test's loop, the time passed in:
no processes, no sleeps.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from lkn.config import build_config
from lkn.engines.process import State
from lkn.errors import EngineUnavailable, GatewayTimeout, LknError, ModelNotFound
from lkn.fleet.failures import FailureHistory, FailurePolicy
from lkn.fleet.records import Demand, EngineRecord
from lkn.fleet.scheduler import Option, Waiter
from lkn.fleet.waiters import FairTurns, Waiting, WaitQueue, Watchers, wake_at

MODEL = build_config({"models": [{"name": "m", "binary": "/bin/x", "model_file": "/x.gguf",
                                  "variants": [{"ctx_size": 512, "vram_mb": 100}]}]}).models[0]


def waiting(wid: int, keys: tuple[str, ...] = ("a",), *, arrived: float = 0.0,
            deadline: float = 60.0, model: str = "m") -> Waiting:
    options = tuple(Option(k, 512, 100) for k in keys)
    future: asyncio.Future[EngineRecord] = asyncio.get_running_loop().create_future()
    return Waiting(Waiter(wid, model, options, arrived), Demand(10, 10), deadline, future)


def queue(*items: Waiting) -> WaitQueue:
    q = WaitQueue()
    for w in items:
        q.add(w)
    return q


def failure(w: Waiting) -> BaseException | None:
    return w.future.exception() if w.future.done() else None


@pytest.mark.parametrize("now,expired", [(59.9, []), (60.0, [1]), (75.0, [1, 2]),
                                         (1000.0, [1, 2])])
async def test_expiry_by_table(now: float, expired: list[int]) -> None:
    w1, w2 = waiting(1, deadline=60.0, arrived=10.0), waiting(2, deadline=75.0)
    done = waiting(3, deadline=0.0)
    done.future.cancel()  # its client went away: not failed again
    q = queue(w1, w2, done)
    assert [w.waiter.id for w in q.expire(now)] == expired
    for w in (w1, w2):
        exc = failure(w)
        assert (w.waiter.id in expired) == isinstance(exc, GatewayTimeout)
    if expired:
        assert f"waited {now - 10:.0f}s in the queue for model 'm'" in str(failure(w1))
    assert len(q) == 3 - len(expired)


# (waiters' options, usable keys, which fail when engine "a" fails)
STRANDED = [
    ([("a",)], set(), [1]),
    ([("a", "b")], {"b"}, []),          # another variant can take it: it keeps waiting
    ([("a", "b")], set(), [1]),         # the other one waits out a backoff: fails too
    ([("b",)], set(), []),              # never wanted "a"
    ([("a",), ("a", "b"), ("c", "a")], {"b"}, [1, 3]),
]


@pytest.mark.parametrize("options,usable,failed", STRANDED)
async def test_fail_stranded_by_table(options: list[tuple[str, ...]], usable: set[str],
                                      failed: list[int]) -> None:
    items = [waiting(i + 1, keys) for i, keys in enumerate(options)]
    q = queue(*items)
    got = q.fail_stranded("a", usable.__contains__,
                          lambda: EngineUnavailable("a failed", headers={"Retry-After": "3"}))
    assert [w.waiter.id for w in got] == failed
    for w in items:
        assert isinstance(failure(w), EngineUnavailable) == (w.waiter.id in failed)
    assert len({id(failure(w)) for w in got}) == len(got)  # one exception each


async def test_withdraw_gives_back_a_grant_made_at_the_same_instant() -> None:
    granted, waiting_one = waiting(1), waiting(2)
    q = queue(granted, waiting_one)
    rec: Any = object()
    q.grant(1, rec)
    assert q.withdraw(1, granted.future) is rec
    assert q.withdraw(2, waiting_one.future) is None and waiting_one.future.cancelled()
    assert len(q) == 0


async def test_snapshot_leaves_out_what_is_not_usable_and_what_is_done() -> None:
    w1, w2, w3 = waiting(1, ("a", "b")), waiting(2, ("b",)), waiting(3, ("a",))
    w3.future.cancel()
    q = queue(w1, w2, w3)
    snap = q.snapshot(lambda key: key != "b")
    assert [(w.id, [o.key for o in w.options]) for w in snap] == [(1, ["a"]), (2, [])]
    assert q.snapshot(lambda key: True)[0] is w1.waiter  # nothing left out: no copy


async def test_replan_renames_or_fails_each_live_waiter() -> None:
    keep, gone = waiting(1, model="old"), waiting(2, model="removed")
    q = queue(keep, gone)

    def options(w: Waiting) -> tuple[str, tuple[Option, ...]]:
        if w.waiter.model == "removed":
            raise ModelNotFound("gone")
        return "new", (Option("z", 1024, 200),)

    q.replan(options)
    assert keep.waiter.model == "new" and [o.key for o in keep.waiter.options] == ["z"]
    assert isinstance(failure(gone), ModelNotFound) and len(q) == 1
    q.fail_all(lambda: EngineUnavailable("shutting down"))
    assert isinstance(failure(keep), LknError) and len(q) == 0


def engine(key: str, *, running: bool, retry_at: float | None = None,
           stop_retry_at: float = 0.0) -> EngineRecord:
    process: Any = SimpleNamespace(state=State.READY if running else State.FAILED)
    r = EngineRecord(1, MODEL, MODEL.variants[0], process, 100, "id")
    r.stop_retry_at = stop_retry_at
    if retry_at is not None:  # one failure at retry_at - base_s: retry at retry_at
        r.history = FailureHistory(consecutive=1, last_failure=retry_at - 1.0)
    return r


POLICY = FailurePolicy(base_s=1.0, cap_s=8.0, max_failures=3, failed_retry_s=20.0)


async def test_wake_at_by_table() -> None:
    w = waiting(1, ("m@512#1",), arrived=100.0, deadline=160.0)
    down = engine("m@512#1", running=False, retry_at=105.0)
    up = engine("m@512#1", running=True, retry_at=105.0)
    rows = [
        ([], [], 100.0, None),
        ([w], [], 100.0, 110.0),          # the wait bound (max_wait_s = 10) comes first
        ([w], [], 110.0, 160.0),          # then the waiter's own deadline
        ([w], [], 160.0, None),           # all passed
        ([w], [down], 100.0, 105.0),      # a backoff ends sooner, for an engine it wants
        ([w], [up], 100.0, 110.0),        # a running engine waits out no backoff
        ([], [down], 100.0, None),        # nobody wants it: no reason to wake
        ([], [engine("x", running=True, stop_retry_at=103.0)], 100.0, 103.0),  # a stop retry
    ]
    for items, records, now, due in rows:
        assert wake_at(now, items, records, POLICY, 10.0) == due, (items, records, now)


async def test_watchers_wake_and_time_out() -> None:
    watchers = Watchers()
    flag: list[bool] = []
    task = asyncio.ensure_future(watchers.wait_until(lambda: bool(flag), 5.0, "the flag"))
    await asyncio.sleep(0)
    flag.append(True)
    watchers.wake()
    await task
    with pytest.raises(GatewayTimeout, match="the flag did not finish within 0s"):
        await watchers.wait_until(lambda: False, 0.0, "the flag")


def test_fair_turns_hold_to_one_request_between_backlogged_keys() -> None:
    """Start-time fair queueing: a key that queued 50 requests at once and a key that sends one
    request after each of its answers are served in turns, never two apart."""
    turns = FairTurns()
    queue = [("bulk", turns.tag("m", 50.0, "bulk")) for _ in range(50)]
    queue.append(("ann", turns.tag("m", 50.0, "ann")))
    served = {"bulk": 0, "ann": 0}
    for _ in range(40):
        key, tag = min(queue, key=lambda kt: kt[1])  # the scheduler's order within a level
        queue.remove((key, tag))
        turns.served("m", 50.0, tag)
        served[key] += 1
        assert abs(served["bulk"] - served["ann"]) <= 1, served
        if key == "ann":
            queue.append(("ann", turns.tag("m", 50.0, "ann")))
    # a new key starts at the current turn, not behind the backlog; another model has its own
    assert turns.tag("m", 50.0, "late") <= min(t for _, t in queue) + 1
    assert turns.tag("other", 50.0, "bulk") == 1.0
    # a batch request is in a lane of its own: bulk's interactive turns do not push it back
    assert turns.tag("m", 0.0, "ann") == 1.0
    # a request that comes back (an escalation) takes the lane's current turn
    assert turns.tag("m", 50.0, "bulk", resume=True) <= min(t for _, t in queue)


def test_a_request_that_leaves_unserved_gives_its_turn_back() -> None:
    turns = FairTurns()
    tags = [turns.tag("m", 50.0, "bulk") for _ in range(5)]  # 1..5
    turns.left("m", 50.0, "bulk", tags[:2])  # 3..5 cancelled: 1 and 2 still queued
    assert turns.tag("m", 50.0, "bulk") == 3.0
    turns.left("m", 50.0, "bulk", [])  # all gone: the key starts at the lane's turn
    turns.served("m", 50.0, 2.0)
    assert turns.tag("m", 50.0, "bulk") == 3.0


def test_the_queue_gives_turns_back_when_a_waiter_leaves() -> None:
    q = WaitQueue()
    loop = asyncio.new_event_loop()
    try:
        def waiting(i: int, key: str) -> Waiting:
            return Waiting(Waiter(i, "m", (), 0.0, key=key), Demand(1, 1), 99.0,
                           loop.create_future())
        first, second = waiting(1, "k"), waiting(2, "k")
        q.add(first)
        q.add(second)
        assert [w.waiter.tag for w in q] == [1.0, 2.0]
        q.withdraw(2, second.future)
        third = waiting(3, "k")
        q.add(third)
        assert third.waiter.tag == 2.0  # the cancelled request's turn, not a phantom third
    finally:
        loop.close()


def test_a_waiter_of_a_renamed_model_takes_the_new_lanes_turn() -> None:
    q = WaitQueue()
    loop = asyncio.new_event_loop()
    try:
        for i in range(3):
            q.add(Waiting(Waiter(i, "old", (), 0.0, key="k"), Demand(1, 1), 99.0,
                          loop.create_future()))
        assert [w.waiter.tag for w in q] == [1.0, 2.0, 3.0]
        q.replan(lambda w: ("new", w.waiter.options))
        # the new lane has served nobody: each resumes at its first turn, arrival decides
        assert [(w.waiter.model, w.waiter.tag) for w in q] == [("new", 1.0)] * 3
    finally:
        loop.close()
