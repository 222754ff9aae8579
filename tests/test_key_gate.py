"""The per-key concurrency gate: FIFO turns, the bound under a burst, the bounded wait, and no
slot lost or leaked to an exception or a cancellation. Events and loop turns, no timing."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from lkn.errors import GatewayTimeout
from lkn.request.key_gate import KeyGate

LONG = 3600.0  # a wait that never runs out within a test


async def turns(n: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(n):
        await asyncio.sleep(0)


async def hold(gate: KeyGate, key: str, limit: int | None, release: asyncio.Event,
               log: list[str] | None = None, name: str = "", wait_s: float = LONG) -> None:
    async with gate.slot(key, limit, wait_s):
        if log is not None:
            log.append(name)
        await release.wait()


async def test_waiters_get_their_slots_first_come_first_served() -> None:
    gate, release, order = KeyGate(), asyncio.Event(), []
    first = asyncio.create_task(hold(gate, "k", 1, release, order, "holder"))
    await turns()
    waiters = []
    for i in range(6):
        waiters.append(asyncio.create_task(hold(gate, "k", 1, release, order, f"w{i}")))
        await turns()  # each arrives after the one before
    assert (gate.in_flight("k"), gate.waiting("k")) == (1, 6)
    release.set()
    await asyncio.gather(first, *waiters)
    assert order == ["holder"] + [f"w{i}" for i in range(6)]
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


async def test_a_newcomer_does_not_overtake_a_woken_waiter() -> None:
    gate, order = KeyGate(), []
    holder = gate.slot("k", 1, LONG)
    await holder.__aenter__()
    waiter = asyncio.create_task(hold(gate, "k", 1, asyncio.Event(), order, "waiter"))
    await turns()
    await holder.__aexit__(None, None, None)  # the slot goes to the waiter at once
    newcomer = asyncio.create_task(hold(gate, "k", 1, asyncio.Event(), order, "newcomer"))
    await turns()
    assert order == ["waiter"] and gate.waiting("k") == 1
    for task in (waiter, newcomer):
        task.cancel()
    await asyncio.gather(waiter, newcomer, return_exceptions=True)
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


@pytest.mark.parametrize("limit", [1, 3, 7])
async def test_a_burst_of_fifty_never_exceeds_max_concurrent(limit: int) -> None:
    gate = KeyGate()
    now, peak, done = 0, 0, 0

    async def request(i: int) -> None:
        nonlocal now, peak, done
        async with gate.slot("k", limit, LONG):
            now += 1
            peak = max(peak, now)
            assert gate.in_flight("k") <= limit
            for _ in range(i % 4 + 1):
                await asyncio.sleep(0)
            now -= 1
        done += 1

    await asyncio.gather(*(request(i) for i in range(50)))
    assert (peak, done) == (limit, 50)
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


async def test_a_wait_past_wait_s_is_a_504_naming_the_key_and_its_limit() -> None:
    gate, release = KeyGate(), asyncio.Event()
    holders = [asyncio.create_task(hold(gate, "alice", 2, release)) for _ in range(2)]
    await turns()
    with pytest.raises(GatewayTimeout) as caught:
        async with gate.slot("alice", 2, 0.01):
            pytest.fail("a third slot was given")
    error = caught.value
    assert error.status == 504 and "'alice'" in error.message
    assert "max_concurrent" in error.message and "2 requests" in error.message
    assert (gate.in_flight("alice"), gate.waiting("alice")) == (2, 0)
    release.set()
    await asyncio.gather(*holders)
    assert gate.in_flight("alice") == 0


async def test_no_wait_allowed_fails_at_once_when_full_and_passes_when_free() -> None:
    gate = KeyGate()
    async with gate.slot("k", 1, 0):
        with pytest.raises(GatewayTimeout):
            async with gate.slot("k", 1, 0):
                pass
    async with gate.slot("k", 1, 0):
        assert gate.in_flight("k") == 1


async def test_a_cancelled_waiter_leaves_no_slot_and_no_waiter() -> None:
    gate, release, order = KeyGate(), asyncio.Event(), []
    holder = asyncio.create_task(hold(gate, "k", 1, release, order, "holder"))
    await turns()
    cancelled = asyncio.create_task(hold(gate, "k", 1, release, order, "cancelled"))
    behind = asyncio.create_task(hold(gate, "k", 1, release, order, "behind"))
    await turns()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (gate.in_flight("k"), gate.waiting("k")) == (1, 1)
    release.set()
    await asyncio.gather(holder, behind)
    assert order == ["holder", "behind"]
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    gate, order = KeyGate(), []
    holder = gate.slot("k", 1, LONG)
    await holder.__aenter__()
    first = asyncio.create_task(hold(gate, "k", 1, asyncio.Event(), order, "first"))
    second_release = asyncio.Event()
    second = asyncio.create_task(hold(gate, "k", 1, second_release, order, "second"))
    await turns()
    await holder.__aexit__(None, None, None)  # hands the slot to "first"...
    first.cancel()                            # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await turns()
    assert order == ["second"] and gate.in_flight("k") == 1
    second_release.set()
    await second
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


async def test_a_cancelled_holder_gives_its_slot_to_the_next() -> None:
    gate, release, order = KeyGate(), asyncio.Event(), []
    holder = asyncio.create_task(hold(gate, "k", 1, asyncio.Event(), order, "holder"))
    await turns()
    waiter = asyncio.create_task(hold(gate, "k", 1, release, order, "waiter"))
    await turns()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    await turns()
    assert order == ["holder", "waiter"] and gate.in_flight("k") == 1
    release.set()
    await waiter
    assert gate.in_flight("k") == 0


async def test_an_exception_in_the_body_gives_the_slot_back() -> None:
    gate = KeyGate()
    with pytest.raises(RuntimeError):
        async with gate.slot("k", 1, LONG):
            raise RuntimeError("engine broke")
    assert gate.in_flight("k") == 0
    async with gate.slot("k", 1, 0):
        pass


async def test_no_max_concurrent_means_no_limit_and_no_wait_but_is_counted() -> None:
    gate, release = KeyGate(), asyncio.Event()
    tasks = [asyncio.create_task(hold(gate, "k", None, release, wait_s=0)) for _ in range(20)]
    await turns()
    assert (gate.in_flight("k"), gate.waiting("k")) == (20, 0)
    release.set()
    await asyncio.gather(*tasks)
    assert gate.in_flight("k") == 0


async def test_keys_do_not_wait_on_each_other() -> None:
    gate = KeyGate()
    async with gate.slot("alice", 1, 0):
        async with gate.slot("bob", 1, 0):
            assert (gate.in_flight("alice"), gate.in_flight("bob")) == (1, 1)
    assert (gate.in_flight("alice"), gate.in_flight("bob"), gate.in_flight("carol")) == (0, 0, 0)


async def test_a_raised_limit_lets_waiters_in_and_a_lowered_one_holds_newcomers() -> None:
    gate, release, order = KeyGate(), asyncio.Event(), []
    tasks = [asyncio.create_task(hold(gate, "k", 1, release, order, f"t{i}")) for i in range(3)]
    await turns()
    assert (gate.in_flight("k"), gate.waiting("k")) == (1, 2)
    tasks.append(asyncio.create_task(hold(gate, "k", 3, release, order, "reloaded")))
    await turns()
    assert order == ["t0", "t1", "t2"] and gate.waiting("k") == 1  # the newcomer is fourth
    lowered = asyncio.create_task(hold(gate, "k", 1, release, order, "lowered"))
    await turns()
    assert gate.waiting("k") == 2
    release.set()
    await asyncio.gather(*tasks, lowered)
    assert order == ["t0", "t1", "t2", "reloaded", "lowered"]
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)


async def test_a_cancelled_waiter_on_an_idle_key_is_not_left_behind() -> None:
    gate = KeyGate()
    holder = gate.slot("k", 1, LONG)
    await holder.__aenter__()
    waiter = asyncio.create_task(hold(gate, "k", 1, asyncio.Event()))
    await turns()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    await holder.__aexit__(None, None, None)
    assert (gate.in_flight("k"), gate.waiting("k")) == (0, 0)
