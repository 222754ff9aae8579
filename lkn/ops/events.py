"""EventBus: what happens on the box, as a stream for ``/admin/events`` and the dashboard.

``publish(kind, **fields)`` stamps an event with a sequence number and the wall time, keeps it in
a bounded history (a subscriber that connects late still sees the recent past) and puts it in
every subscriber's bounded queue. A subscriber that does not keep up loses its oldest events and
is told how many (a ``dropped`` event): the publisher — the engine manager, a request's handler —
never waits for a slow reader.

Kinds: ``engine`` (an engine changed state), ``swap`` (engines stopped to make room for another),
``request`` (a request finished), ``reload`` (the config was reloaded, or a reload failed),
``dropped`` (this subscriber missed events).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import Any, AsyncIterator, Callable

Event = dict[str, Any]


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: collections.deque[Event] = collections.deque()
        self._maxsize = maxsize
        self._wakeup: asyncio.Future[None] | None = None
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event (a ``dropped`` notice first if events were lost), or None when
        ``timeout_s`` passes without one."""
        if not self._queue:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wakeup, timeout_s)
            except asyncio.TimeoutError:
                return None
            finally:
                self._wakeup = None
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return {"type": "dropped", "count": count}
        return self._queue.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.get()
            if event is not None:
                yield event

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, *, history: int = 500, queue: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self._seq = itertools.count(1)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._queue = queue
        self._clock = clock

    def publish(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "seq": next(self._seq), "time": round(self._clock(), 3), **fields}
        self._history.append(event)
        for sub in list(self._subscribers):
            sub._put(event)
        return event

    def recent(self, *, kinds: set[str] | None = None, limit: int | None = None) -> list[Event]:
        events = [e for e in self._history if kinds is None or e["type"] in kinds]
        return events[-limit:] if limit else events

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue)
        self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
