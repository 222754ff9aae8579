"""The event loop lkn serves on: uvloop when it is installed, else asyncio's own.

bench/ab_cpu.py (2-core box, interleaved runs): uvloop cut lkn's CPU per 16-chunk stream by
~15 % and per plain answer by ~5 % (within the noise); bench/RESULTS.md has the numbers.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Coroutine, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[object, object, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
