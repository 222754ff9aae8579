"""Supervisor: the owner of the manager's background tasks (starts, stops).

A task nobody awaits is a place where an exception vanishes. Each task here runs in a fresh
context (the request whose event made the decision does not own it), an unexpected exception is
handed to ``on_error`` in the task's own step, and ``cancel_all`` at shutdown ends them all.
"""
from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable, Coroutine


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, coro: Coroutine[Any, Any, None], name: str,
            on_error: Callable[[Exception], None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Handled in the task's own step, before the decision its ``finally`` asked
                # for runs: that decision must already see the failure and its backoff.
                on_error(exc)

        task = asyncio.create_task(guarded(), name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
