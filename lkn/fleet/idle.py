"""The idle policy: which engines give their memory back, and how (pure; tested by tables).

Engines that can sleep (SGLang with ``sleep_when_idle_s``) release their memory and keep
running; others with ``idle_unload_s`` (or a client's ``keep_alive``) stop. Idle time counts
from the last finished request
(for an unload: or from becoming ready, so an engine loaded and never used still goes). Pinned
engines, remote servers and engines with requests in flight never count as idle. The manager
runs ``sleep_idle()`` now and then: ``give_back()`` carries out what these rules say.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from lkn.fleet import scheduler as sched
from lkn.fleet.records import EngineRecord

log = logging.getLogger("lkn.manager")

# The manager's wait_until: (condition, timeout_s, what it waits for, for the timeout's message)
WaitUntil = Callable[[Callable[[], bool], float, str], Awaitable[None]]


def _idle(record: EngineRecord) -> bool:
    return (not record.model.pinned and record.sched_state() == sched.READY
            and not record.in_flight)


def idle_limit(record: EngineRecord) -> float | None:
    """How long the record may stay idle before it stops; None: never. A client's
    ``keep_alive`` (Ollama's) overrides the model's ``idle_unload_s`` (0 there: never)."""
    if record.keep_alive_s is not None:
        return None if math.isinf(record.keep_alive_s) else record.keep_alive_s
    return record.model.idle_unload_s or None


def unload_after(record: EngineRecord, now: float) -> float | None:
    """The record's idle limit if it is due to stop for being idle now, else None."""
    unload = idle_limit(record)
    if (unload is not None and _idle(record) and record.model.upstream is None
            and not record.process.client.supports_sleep
            and now - max(record.last_used, record.history.ready_at or 0.0) >= unload):
        return unload
    return None


def sleep_due(record: EngineRecord, now: float) -> bool:
    """Whether the record can sleep and has been idle for its ``sleep_when_idle_s``."""
    after = record.model.sleep_when_idle_s
    return (after is not None and record.process.client.supports_sleep and _idle(record)
            and now - record.last_used >= after)


@dataclass(frozen=True)
class Candidate:
    """A ready engine an operator could unload to free memory."""
    engine: str
    key: str
    idle_s: float
    vram_mb: int

    def as_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "key": self.key, "idle_s": self.idle_s,
                "vram_mb": self.vram_mb}


def unload_candidates(records: Iterable[EngineRecord], now: float,
                      min_idle_s: float) -> list[Candidate]:
    """Ready engines, not pinned, idle for ``min_idle_s`` or more: longest idle first."""
    out = [Candidate(r.slot_id, r.key, round(now - r.last_used, 1), r.vram_mb)
           for r in records if _idle(r) and now - r.last_used >= min_idle_s]
    return sorted(out, key=lambda c: -c.idle_s)


async def sleep(record: EngineRecord, then: Callable[[], None]) -> bool:
    """Put the engine to sleep; ``then`` runs once it is done, or failed (the manager's kick).
    False if the engine declined."""
    # Marked before the await: no request is granted to it while it releases memory.
    record.releasing = True
    try:
        return await record.process.sleep()
    finally:
        record.releasing = False
        then()


async def drain_then_sleep(record: EngineRecord, wait_until: WaitUntil, timeout_s: float,
                           then: Callable[[], None]) -> bool:
    """An operator's sleep: no new grants, wait until its requests are done, then sleep."""
    record.releasing = True
    try:
        await wait_until(lambda: not record.in_flight, timeout_s, f"draining {record.key}")
    except BaseException:
        record.releasing = False
        then()
        raise
    return await sleep(record, then)


async def give_back(records: Iterable[EngineRecord], now: float,
                    stop: Callable[[EngineRecord, str], None],
                    then: Callable[[], None]) -> None:
    """Carry out the policy once: ``stop`` the engines due to unload, then put those due to
    sleep to sleep, one after the other (each is asked again just before: the sleeps
    await)."""
    records = list(records)
    for record in records:
        unload = unload_after(record, now)
        if unload is not None:
            stop(record, f"idle for {unload:g}s")
    for record in records:
        if not sleep_due(record, now):
            continue
        try:
            await sleep(record, then)
        except Exception as exc:
            log.warning("could not put %s to sleep: %s", record.key, exc)
