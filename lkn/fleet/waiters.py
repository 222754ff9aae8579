"""The queue of requests waiting for an engine, and when the manager must look at it again.

Each queued request is a ``Waiting``: the scheduler's ``Waiter`` (its options, arrival, backend
preference), the ``Demand`` it was planned from (a reload plans it again), the deadline of its
own timeout and the future its ``acquire()`` awaits. The queue grants, expires and fails them;
which waiter gets which engine is the scheduler's business, never the queue's.

``wake_at()`` is the pure rule for the manager's one timer: the next deadline, wait bound,
backoff end or stop retry still ahead.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

from lkn.errors import GatewayTimeout, LknError
from lkn.fleet import planner
from lkn.fleet import scheduler as sched
from lkn.fleet.learned import ArrivalRates
from lkn.fleet.failures import FailurePolicy
from lkn.fleet.records import Demand, EngineRecord


@dataclass
class Waiting:
    waiter: sched.Waiter
    demand: Demand
    deadline: float  # its own timeout (queue_timeout_s, or the caller's)
    future: asyncio.Future[EngineRecord]


class WaitQueue:
    """The waiting requests, and how fast each model's arrive (``learned.ArrivalRates``)."""

    def __init__(self, *, started: float = 0.0) -> None:
        self._by_id: dict[int, Waiting] = {}
        self._arrivals = ArrivalRates(started=started)
        self._turns = FairTurns()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(list(self._by_id.values()))

    def add(self, waiting: Waiting, *, new: bool = True) -> None:
        """Queue ``waiting``; a ``new`` arrival counts for its model's arrival rate and takes
        its key's next turn. A request that comes back (an escalation) keeps its place: the
        lane's current turn, ahead of what queued after it arrived."""
        w = waiting.waiter = replace(waiting.waiter, tag=self._turns.tag(
            waiting.waiter.model, waiting.waiter.priority, waiting.waiter.key, resume=not new))
        self._by_id[w.id] = waiting
        if new:
            self._arrivals.arrive(w.model, w.arrived, planner.weight(w.priority), w.key)

    def rates(self, now: float) -> dict[str, dict[str, float]]:
        """Each model's arrivals per second by key over the last minutes, weighted by
        priority."""
        return self._arrivals.rates(now)

    def _gone(self, waiting: Waiting | None) -> None:
        """``waiting`` left without a grant: its key's turns go back to its queued requests."""
        if waiting is None:
            return
        w = waiting.waiter

        def lane(x: sched.Waiter) -> tuple[str, int, str]:
            return x.model, planner.lane_of(x.priority), x.key
        self._turns.left(w.model, w.priority, w.key,
                         [o.waiter.tag for o in self._by_id.values() if lane(o.waiter) == lane(w)])

    def withdraw(self, waiter_id: int,
                 future: asyncio.Future[EngineRecord]) -> EngineRecord | None:
        """The waiter's client went away: it leaves the queue. Returns the record if it was
        granted one at the same instant (the caller gives it back)."""
        self._gone(self._by_id.pop(waiter_id, None))
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        if not future.done():
            future.cancel()
        return None

    def queued_for(self, model_name: str) -> int:
        return sum(1 for w in self._by_id.values() if w.waiter.model == model_name)

    def live(self) -> list[Waiting]:
        """The waiters still waiting (not failed or cancelled meanwhile), in arrival order."""
        return [w for w in self._by_id.values() if not w.future.done()]

    def snapshot(self, usable: Callable[[str], bool]) -> list[sched.Waiter]:
        """The live waiters for the scheduler, each with only its ``usable`` options: a variant
        waiting out a backoff is left out for now, so a request that another variant can hold
        is served by it."""
        waiters = []
        for w in self.live():
            options = tuple(o for o in w.waiter.options if usable(o.key))
            # a copy only when an option is left out: this runs on every event
            waiters.append(w.waiter if len(options) == len(w.waiter.options)
                           else replace(w.waiter, options=options))
        return waiters

    def grant(self, waiter_id: int, record: EngineRecord) -> None:
        waiting = self._by_id.pop(waiter_id)
        self._turns.served(waiting.waiter.model, waiting.waiter.priority, waiting.waiter.tag)
        waiting.future.set_result(record)

    def fail(self, waiting: Waiting, error: BaseException) -> None:
        del self._by_id[waiting.waiter.id]
        self._gone(waiting)
        waiting.future.set_exception(error)

    def expire(self, now: float) -> list[Waiting]:
        """Fail with a 504 the waiters whose own timeout has passed; returns them."""
        expired = [w for w in self.live() if now >= w.deadline]
        for w in expired:
            waited = now - w.waiter.arrived
            self.fail(w, GatewayTimeout(
                f"request waited {waited:.0f}s in the queue for model '{w.waiter.model}' "
                f"without an engine becoming free"))
        return expired

    def fail_stranded(self, key: str, usable: Callable[[str], bool],
                      error: Callable[[], LknError]) -> list[Waiting]:
        """Fail the waiters that only the engine ``key`` could serve now: those with another
        option that is ``usable`` keep waiting (failures stay local). Returns the failed."""
        stranded = []
        for w in self.live():
            keys = [o.key for o in w.waiter.options]
            if key not in keys or any(k != key and usable(k) for k in keys):
                continue
            stranded.append(w)
            self.fail(w, error())
        return stranded

    def fail_all(self, error: Callable[[], LknError]) -> None:
        for w in self.live():
            w.future.set_exception(error())
        self._by_id.clear()
        self._turns = FairTurns()

    def replan(self, options: Callable[[Waiting], tuple[str, tuple[sched.Option, ...]]]) -> None:
        """After a reload: each waiter gets its model's name and options again from
        ``options``; one that raises (model gone, nothing fits any more) fails with it."""
        for w in self.live():
            try:
                model, opts = options(w)
            except LknError as exc:
                self.fail(w, exc)
                continue
            tag = w.waiter.tag if model == w.waiter.model else self._turns.tag(
                model, w.waiter.priority, w.waiter.key, resume=True)  # a new lane: its turn
            w.waiter = replace(w.waiter, model=model, options=opts, tag=tag)


class FairTurns:
    """Start-time fair queueing per model and priority (a *lane*): a request's tag is one more
    than the later of its key's last tag in the lane and the lane's virtual time (the tag of
    its latest granted request). A request that leaves without a grant gives its turn back."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int, str], float] = {}
        self._time: dict[tuple[str, int], float] = {}

    def tag(self, model: str, priority: float, key: str, *, resume: bool = False) -> float:
        """The next turn of ``key``; ``resume``: the lane's current turn (a request that was
        queued before, elsewhere, is not sent to the back of its key's queue)."""
        lane = (model, planner.lane_of(priority))
        now = self._time.get(lane, 0.0)
        if resume:
            return now + 1.0
        tag = max(now, self._last.get((*lane, key), 0.0)) + 1.0
        self._last[(*lane, key)] = tag
        return tag

    def served(self, model: str, priority: float, tag: float) -> None:
        lane = (model, planner.lane_of(priority))
        self._time[lane] = max(self._time.get(lane, 0.0), tag)
        if len(self._last) > 1024:  # a key whose last turn has passed is as good as new
            self._last = {k: t for k, t in self._last.items()
                          if t > self._time.get((k[0], k[1]), 0.0)}

    def left(self, model: str, priority: float, key: str, queued: list[float]) -> None:
        """A request of ``key`` left unserved; ``queued``: the tags of its others still queued
        in the lane (none: the key starts again at the lane's current turn)."""
        entry = (model, planner.lane_of(priority), key)
        if queued:
            self._last[entry] = max(queued)
        else:
            self._last.pop(entry, None)


def wake_at(now: float, waiting: Iterable[Waiting], records: Iterable[EngineRecord],
            policy: FailurePolicy, max_wait_s: float,
            recheck: float | None = None) -> float | None:
    """When the scheduler must run again although nothing happens: the earliest of every
    waiter's timeout and wait bound, the end of the backoff of an engine a waiter could use,
    a failed stop's retry time and the scheduler's own ``recheck`` (a held swap or an engine's
    residence ends); None when none is ahead of ``now``."""
    waiting = list(waiting)
    due = [w.deadline for w in waiting] + ([recheck] if recheck is not None else [])
    due += [w.waiter.arrived + max_wait_s for w in waiting]
    wanted = {o.key for w in waiting for o in w.waiter.options}
    records = list(records)
    due += [r.history.retry_at(policy) for r in records
            if r.slot_id in wanted and not r.running()]
    due += [r.stop_retry_at for r in records]
    ahead = [t for t in due if t > now]
    return min(ahead) if ahead else None


class Watchers:
    """Callers waiting for a condition on the engines, checked after every decision."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    async def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until ``done()`` holds; GatewayTimeout after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise GatewayTimeout(f"{what} did not finish within {timeout_s:g}s")
            watcher: asyncio.Future[None] = loop.create_future()
            self._futures.append(watcher)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watcher, remaining)

    def wake(self) -> None:
        """A decision ran: every waiting caller checks its condition again."""
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)
