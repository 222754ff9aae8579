"""The event bus: history for late subscribers, bounded queues that never block publishers."""
from __future__ import annotations

import asyncio

from lkn.ops.events import EventBus


async def test_subscribers_get_events_in_order_and_late_ones_see_history() -> None:
    bus = EventBus(history=3, clock=lambda: 100.0)
    with bus.subscribe() as sub:
        for i in range(5):
            bus.publish("engine", n=i)
        got = [await sub.get(1) for _ in range(5)]
    assert [e["n"] for e in got if e] == [0, 1, 2, 3, 4]
    assert got[0] == {"type": "engine", "seq": 1, "time": 100.0, "n": 0}
    assert [e["n"] for e in bus.recent()] == [2, 3, 4]
    assert [e["n"] for e in bus.recent(limit=1)] == [4]
    assert bus.subscribers == 0


async def test_a_slow_subscriber_loses_the_oldest_and_is_told() -> None:
    bus = EventBus(queue=2)
    sub = bus.subscribe()
    for i in range(5):
        bus.publish("request", n=i)
    assert await sub.get(1) == {"type": "dropped", "count": 3}
    assert [(await sub.get(1) or {})["n"] for _ in range(2)] == [3, 4]
    assert await sub.get(0.01) is None  # nothing more: a timeout, not a hang
    sub.close()


async def test_kinds_filter_and_waiting_subscriber_wakes() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        waiting = asyncio.create_task(sub.get(5))
        await asyncio.sleep(0)
        bus.publish("swap", stopped="a")
        assert (await waiting or {})["stopped"] == "a"
    bus.publish("engine")
    assert [e["type"] for e in bus.recent(kinds={"swap"})] == ["swap"]
