"""At most ``max_concurrent`` requests of one client key in flight; the rest wait their turn.

A key over its concurrency waits in its own FIFO queue rather than getting an instant 429: a
team's agent that fires ten requests at once should see them served two at a time, not see eight
fail. The wait is bounded (``wait_s``, the server's ``max_queue_wait_s``); past it the request
fails with a 504 naming the key, so one key's backlog never holds a request forever.

Fairness is first come, first served within a key: a freed slot is handed directly to the oldest
waiter (its count never drops in between), so a newcomer cannot overtake a waiter whose wake-up
is still scheduled. Keys do not wait on each other here; sharing the engines between keys is the
fleet's business.

Every slot taken is given back: on leaving the ``async with`` for any reason, and when a waiter
is cancelled or times out in the instant its slot was handed over (it passes the slot on).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator

from lkn.errors import GatewayTimeout


class _KeySlots:
    def __init__(self) -> None:
        self.limit: float = math.inf
        self.in_flight = 0  # slots held, including ones handed to a waiter not yet resumed
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def wake(self) -> None:
        """Hand free slots to the oldest waiters still waiting."""
        while self.waiters and self.in_flight < self.limit:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.wake()


class KeyGate:
    """The per-key concurrency gate; one for the app, shared by every request."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeySlots] = {}

    def in_flight(self, key_id: str) -> int:
        slots = self._keys.get(key_id)
        return slots.in_flight if slots else 0

    def waiting(self, key_id: str) -> int:
        slots = self._keys.get(key_id)
        return sum(1 for w in slots.waiters if not w.done()) if slots else 0

    @contextlib.asynccontextmanager
    async def slot(self, key_id: str, max_concurrent: int | None,
                   wait_s: float) -> AsyncIterator[None]:
        """Hold one of ``key_id``'s slots for the body. ``max_concurrent`` None: no limit (the
        request is still counted in flight). Raises ``GatewayTimeout`` after ``wait_s``."""
        slots = self._keys.get(key_id)
        if slots is None:
            slots = self._keys[key_id] = _KeySlots()
        # The latest config's limit applies; a raised limit lets waiters in at once.
        slots.limit = math.inf if max_concurrent is None else max(1, max_concurrent)
        slots.wake()
        try:
            if not slots.waiters and slots.in_flight < slots.limit:
                slots.in_flight += 1
            else:
                await self._wait(key_id, slots, max_concurrent, wait_s)
        except BaseException:
            self._tidy(key_id, slots)
            raise
        try:
            yield
        finally:
            slots.release()
            self._tidy(key_id, slots)

    async def _wait(self, key_id: str, slots: _KeySlots, max_concurrent: int | None,
                    wait_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slots.waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, wait_s)):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                slots.release()  # handed a slot in the same instant it gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    slots.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise GatewayTimeout(
                    f"key {key_id!r} already has {max_concurrent} requests in flight (its "
                    f"max_concurrent); this one waited {wait_s:g} s for a slot and gave up"
                ) from None
            raise

    def _tidy(self, key_id: str, slots: _KeySlots) -> None:
        """Forget an idle key, so ids of keys removed by a reload do not stay behind."""
        if slots.in_flight == 0 and not slots.waiters and self._keys.get(key_id) is slots:
            del self._keys[key_id]
