"""EngineManager: carries out the scheduler's decisions on engine records.

Requests ``acquire()`` a lease on an engine that holds them and release it when their answer is
relayed. Every event (arrival, release, start finished or failed, stop finished, crash, reload,
timer) re-runs the pure ``scheduler.decide()`` on a snapshot built from the records; its
Grant/Start/Stop actions are applied here. In-flight requests are never cut by a swap: the
scheduler only evicts engines with nothing in flight.

Every background task runs under ``_supervise``: an unexpected error is logged with the engine's
name, fails the requests waiting for that engine with a 503, counts as a failure of the engine
(so its next start waits for the backoff: never a tight loop) and never leaves a record marked
as starting or stopping.

Its helpers, each one concept: the queue of waiting requests (``waiters``), the backends'
breakers and balancing (``backend_pool``), VRAM needs learnt from the engines (``footprints``),
the idle policy (``idle``) and how clients and processes are built (``processes``).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import math
import time
from typing import Any, Callable, Coroutine

import aiohttp

from lkn.config import Config, ModelConfig
from lkn.engines.gpu import GpuMonitor
from lkn.engines.process import EngineProcess, EngineStartError, PortPool, Spawn, State
from lkn.engines.registry import EngineRegistry
from lkn.errors import EngineUnavailable, ModelNotFound, QueueFull
from lkn.fleet import idle
from lkn.fleet import scheduler as sched
from lkn.fleet.admission import admissible
from lkn.fleet.backend_pool import BackendPool
from lkn.fleet.failures import record_failure, record_ready, record_served
from lkn.fleet.footprints import Footprints
from lkn.fleet.model_selector import ModelSelector
from lkn.fleet.processes import (ClientFactory, ProcessFactory, ProcessMaker,
                                 default_client_factory, failure_policy)
from lkn.fleet.records import Demand, EngineRecord, Lease, Process
from lkn.fleet.selector import VariantInfo
from lkn.fleet.table import EngineTable
from lkn.fleet.tasks import Supervisor
from lkn.fleet.waiters import Waiting, Watchers, WaitQueue, wake_at
from lkn.ops.events import EventBus

log = logging.getLogger("lkn.manager")

__all__ = ["Demand", "EngineManager", "EngineRecord", "Lease"]


class EngineManager:
    def __init__(self, cfg: Config, session: aiohttp.ClientSession, *,
                 client_factory: ClientFactory = default_client_factory,
                 process_factory: ProcessFactory | None = None,
                 gpu: GpuMonitor | None = None, spawn: Spawn | None = None,
                 registry: EngineRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 events: EventBus | None = None) -> None:
        self.cfg = cfg
        self.bus = events or EventBus()
        self._session = session
        self.selector = ModelSelector(self, session)
        self._gpu = gpu or GpuMonitor()
        self._registry = registry
        self._clock = clock
        self._backends = BackendPool(clock=clock, bus=self.bus)
        self._footprints = Footprints(registry.dir if registry is not None else None)
        self.policy = failure_policy(cfg)
        self._ids = itertools.count(1)
        self._waiting = WaitQueue(started=clock())
        self._tasks = Supervisor()
        self._decide_scheduled = False
        self._watchers = Watchers()  # woken after every decision
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.generation = 1
        self.starts = 0
        self.start_failures = 0
        # Errors no code path expected (a bug or an engine doing something new): logged, turned
        # into 503s for the waiting requests, and kept here for /health and the tests.
        self.unexpected: collections.deque[str] = collections.deque(maxlen=50)
        # Recent engine state changes (this manager's clock, engine, state). The bus carries
        # them too, but stamped with wall time: tests that order them by time.monotonic() read
        # these.
        self.events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=200)
        self._table = EngineTable(
            cfg, client_factory=client_factory,
            process_factory=process_factory or ProcessMaker(
                lambda: self.cfg, session, PortPool(*cfg.server.port_range), clock=clock,
                spawn=spawn, registry=registry),
            footprints=self._footprints, ids=self._ids, on_state=self._on_state)

    @property
    def on_backend(self) -> Callable[[str, str, bool], None] | None:
        """Told of every backend answer (model, backend, ok): the metrics' counts."""
        return self._backends.on_backend

    @on_backend.setter
    def on_backend(self, hook: Callable[[str, str, bool], None] | None) -> None:
        self._backends.on_backend = hook

    # ------------------------------------------------------------------ reload
    def reload(self, cfg: Config) -> None:
        """Adopt a new config. Unchanged engines (same identity) keep running; changed or
        removed ones are retired: their in-flight requests finish, then they stop (a start in
        progress is stopped at once). Queued requests are re-planned against the new config."""
        self.cfg = cfg
        self.policy = failure_policy(cfg)
        for old in self._table.reload(cfg):
            # A start in progress is cut short, unless requests from before a crash still
            # hold the record: then it drains like any retired engine.
            if old.starting and not old.stopping and not old.in_flight:
                self._stop(old, "retired while starting")
        self.generation += 1
        self._replan()
        self._kick()

    def _replan(self) -> None:
        """Queued requests against the new config: a vanished model is a 404, a changed one
        gets its variants again (maybe a 400 because it no longer fits)."""
        now = self._clock()

        def options(w: Waiting) -> tuple[str, tuple[sched.Option, ...]]:
            model = self.cfg.resolve(w.waiter.model)
            if model is None:
                raise ModelNotFound(f"The model '{w.waiter.model}' was removed from the "
                                    f"config while this request waited", param="model")
            return model.name, self._options(model, w.demand, now)

        self._waiting.replan(options)

    # ------------------------------------------------------------------ queries
    def records(self) -> list[EngineRecord]:
        return self._table.records()

    def variants(self, model: ModelConfig) -> list[VariantInfo]:
        return self._table.variants(self.cfg.in_force(model))

    def ready_process(self, model_name: str) -> Process | None:
        return self._table.ready_process(model_name)

    def is_loaded(self, model_name: str) -> bool:
        return self._table.is_loaded(model_name)

    def processes(self) -> list[Process]:
        return self._table.processes()

    def describe(self) -> list[dict[str, Any]]:
        """Every configured variant (stopped ones too), and retired engines until they are
        gone."""
        return self._table.describe(self.policy, self._clock())

    def waiting_on(self, model_name: str) -> str:
        return self._table.waiting_on(model_name)

    def queued(self) -> int:
        return len(self._waiting)

    def in_flight(self) -> int:
        return self._table.in_flight()

    # ------------------------------------------------------------------ backends
    def report(self, record: EngineRecord, ok: bool, *, active: bool = False) -> None:
        """An engine's answer (before the first byte): a backend's for its circuit breaker;
        any engine's success proves it in service (a crash after it is not a crash loop)."""
        if ok:
            record.history = record_served(record.history)
        if self._backends.report(record.model, ok, active=active):
            self._kick()

    async def check_backends(self) -> None:
        """Active health of each running backend (see ``BackendPool.check``)."""
        running = [r for r in self._table.active()
                   if r.model.parent is not None and r.sched_state() == sched.READY]
        if await self._backends.check(running, self._session):
            self._kick()

    def backend_status(self, model: ModelConfig) -> list[dict[str, Any]]:
        return self._backends.status(self.cfg.in_force(model), self._table.in_flight_of)

    # ------------------------------------------------------------------ leases
    def _options(self, model: ModelConfig, demand: Demand,
                 now: float) -> tuple[sched.Option, ...]:
        return admissible(model, self.selector.options(model, demand), demand,
                          records={r.slot_id: r for r in self._table.of(model)},
                          backend_allowed=lambda b: self._backends.allowed(b, model.breaker, now),
                          policy=self.policy, now=now,
                          start_s=self._table.swap_prior(self.cfg.server.swap_cost_s).start_s)

    async def acquire(self, model: ModelConfig, demand: Demand, *,
                      timeout_s: float | None = None, arrived: float | None = None) -> Lease:
        """Queue for an engine of ``model``. ``arrived`` (this manager's clock): when the request
        first reached lkn, for a request that comes back (an escalation): it queues by that
        time, not as the newest, so the wait bound still holds for it."""
        s = self.cfg.server
        if self._closing:
            raise EngineUnavailable("lkn is shutting down and accepts no new requests")
        # The caller resolved the model before it counted tokens; a reload may have come since.
        model = self.cfg.in_force(model)
        now = self._clock()
        options = self._options(model, demand, now)
        queued = self._waiting.queued_for(model.name)
        if not sched.admit(queued, s.max_queue_per_model):
            raise QueueFull(f"{queued} requests are already queued for model '{model.name}'",
                            headers={"Retry-After": "1"})
        prefer = self._backends.prefer(model, self._table.in_flight_of, demand.sticky_key)
        if prefer:
            options = tuple(sorted(options, key=lambda o: (prefer.index(o.group), o.ctx)))
        waiter = sched.Waiter(next(self._ids), model.name, options,
                              now if arrived is None else min(arrived, now), prefer=prefer,
                              key=demand.client_key, priority=demand.priority)
        future: asyncio.Future[EngineRecord] = asyncio.get_running_loop().create_future()
        timeout = s.queue_timeout_s if timeout_s is None else timeout_s
        self._waiting.add(Waiting(waiter, demand, now + timeout, future), new=arrived is None)
        self._kick()
        try:
            record = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The client went away while queued; a grant made at the same instant goes back.
            granted = self._waiting.withdraw(waiter.id, future)
            if granted is not None:
                self.release(granted)
            self._kick()
            raise
        return Lease(self, record)

    def release(self, record: EngineRecord) -> None:
        if record.in_flight <= 0:  # a second release would hide a leak: say so loudly
            self.unexpected.append(f"release of {record.slot_id} with nothing in flight")
            log.error("engine %s: release with nothing in flight", record.slot_id)
        record.in_flight = max(0, record.in_flight - 1)
        record.last_used = self._clock()
        self._kick()

    # ------------------------------------------------------------------ operator hooks
    async def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until ``done()`` holds, checked after every decision (every engine event);
        GatewayTimeout after ``timeout_s``."""
        await self._watchers.wait_until(done, timeout_s, what)

    def mark_unloading(self, model: ModelConfig) -> list[EngineRecord]:
        """No more grants to the model's running engines; each stops once idle."""
        records = [r for r in self._table.of(self.cfg.in_force(model)) if r.running()]
        for r in records:
            r.unloading = True
        self._kick()
        return records

    def force_stop(self, record: EngineRecord, reason: str) -> None:
        """Stop now, in-flight requests or not (their streams end with an error event)."""
        if record.stopping or not record.running():
            return
        self._stop(record, reason)

    def stopped_since(self, marks: dict[EngineRecord, int]) -> bool:
        """Whether each record stopped (or failed) at least once since ``stops`` was read into
        ``marks``, or was not running then; a request may have started it again since."""
        return all(r.stops > n or (not r.running() and not r.unloading)
                   for r, n in marks.items())

    async def sleep_engine(self, record: EngineRecord) -> bool:
        """Release the engine's memory once its in-flight requests are done (no new grants
        meanwhile); the next request wakes it. False if the engine declined (busy inside, or
        no longer ready)."""
        return await idle.drain_then_sleep(record, self.wait_until,
                                           self.cfg.server.request_timeout_s, self.kick)

    def unload_candidates(self, min_idle_s: float = 60.0) -> list[dict[str, Any]]:
        """Ready engines, not pinned, idle for ``min_idle_s`` or more: longest idle first."""
        return [c.as_dict() for c in idle.unload_candidates(self._table.active(),
                                                            self._clock(), min_idle_s)]

    async def sleep_idle(self) -> None:
        """Idle engines give their memory back (the rules: ``lkn.fleet.idle``): those that can
        sleep release it and keep running, others with ``idle_unload_s`` stop. The next
        request starts or wakes them."""
        await idle.give_back(self._table.active(), self._clock(), self._stop, self.kick)
        self.kick()

    # ------------------------------------------------------------------ decisions
    def kick(self) -> None:
        """Re-run the scheduler soon (after an event the manager cannot see, e.g. time)."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to decide yet
            self._kick()

    def _kick(self) -> None:
        if self._decide_scheduled:
            return
        self._decide_scheduled = True
        # A fresh context: the decision (and the start and stop tasks it creates) belongs to no
        # request, whatever request's event triggered it (request ids in log lines).
        asyncio.get_running_loop().call_soon(self._decide, context=contextvars.Context())

    def _on_state(self, record: EngineRecord, old: State) -> None:
        proc = record.process
        self.events.append((self._clock(), record.key, proc.state.value))
        if proc.state is State.READY and old is State.STARTING and proc.client.learn_footprint:
            # only a child lkn spawned reports its buffers (a remote server's report is empty)
            self._footprints.learn(record, proc.start_report, self.cfg.server.vram_overhead_mb)
        crashed = record.note_state(old, self._clock())
        self.bus.publish("engine", **record.event(old))
        if crashed:
            log.warning("engine %s crashed (%d in a row); it restarts on demand", record.key,
                        record.history.consecutive)
        self.kick()

    def _decide(self) -> None:
        self._decide_scheduled = False
        self._table.forget_retired()
        s = self.cfg.server
        now = self._clock()
        self._waiting.expire(now)
        by_id = {r.slot_id: r for r in self.records()}
        stop_s = self._table.swap_prior(s.swap_cost_s).stop_s
        slots = [slot for r in by_id.values() if (slot := r.slot(stop_s)) is not None]
        # Variants waiting out a backoff are left out of the options for now, so a request
        # that another variant can hold is served by it; the timer comes back at retry time.
        waiters = self._waiting.snapshot(
            lambda key: key in by_id and by_id[key].startable(self.policy, now))
        actions = sched.decide(slots, waiters, budget_mb=s.vram_budget_mb,
                               max_engines=s.max_loaded_engines, max_wait_s=s.max_queue_wait_s,
                               now=now, rates=self._waiting.rates(now))
        for action in actions:
            if isinstance(action, sched.Grant):
                record = by_id[action.key]
                record.in_flight += 1
                record.last_used = now
                self._waiting.grant(action.waiter, record)
            elif isinstance(action, sched.Start):
                record = by_id[action.key]
                record.starting = True
                self._supervise(self._run_start(record), record, "start")
            elif isinstance(action, sched.Stop):
                record = by_id[action.key]
                if record.stop_retry_at > now:
                    continue  # its last stop failed: not again in a tight loop (timer below)
                reason = "unload" if record.unloading else action.reason
                if action.for_key in by_id:
                    self.bus.publish("swap", stopped=record.slot_id, stopped_key=record.key,
                                     for_engine=action.for_key, for_key=by_id[action.for_key].key)
                    reason = f"evicted for {by_id[action.for_key].key}"
                self._stop(record, reason)
        self._arm_timer(now, next((a.at for a in actions if isinstance(a, sched.Recheck)), None))
        self._watchers.wake()

    def _arm_timer(self, now: float, recheck: float | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        at = wake_at(now, self._waiting, self.records(), self.policy,
                     self.cfg.server.max_queue_wait_s, recheck)
        self._timer = (None if at is None else
                       asyncio.get_running_loop().call_later(at - now + 0.001, self._kick))

    # ------------------------------------------------------------------ tasks
    def _supervise(self, coro: Coroutine[Any, Any, None], record: EngineRecord,
                   what: str) -> None:
        self._tasks.run(coro, f"lkn {what} {record.slot_id}",
                        lambda exc: self._unexpected(record, what, exc))

    def _stop(self, record: EngineRecord, reason: str) -> None:
        record.stopping = True
        self._supervise(self._run_stop(record, reason), record, "stop")

    def _unexpected(self, record: EngineRecord, what: str, exc: Exception) -> None:
        log.error("engine %s: unexpected error in %s: %r", record.key, what, exc, exc_info=exc)
        self.unexpected.append(f"{record.slot_id} {what}: {exc!r}")
        record.starting = record.stopping = record.releasing = False
        record.history = record_failure(record.history, f"{what} failed: {exc!r}",
                                        self._clock())
        if what == "stop":  # the same backoff a failed start waits for
            record.stop_retry_at = record.history.retry_at(self.policy)
        self._fail_waiters_of(record, f"engine {record.key}: {what} failed: {exc!r}")
        self.kick()

    def _fail_waiters_of(self, record: EngineRecord, message: str) -> None:
        """Fail the queued requests that only this engine could serve now."""
        now = self._clock()
        by_id = {r.slot_id: r for r in self.records()}
        retry = max(1, math.ceil(record.history.retry_at(self.policy) - now))
        self._waiting.fail_stranded(
            record.slot_id, lambda k: k in by_id and by_id[k].startable(self.policy, now),
            lambda: EngineUnavailable(message, headers={"Retry-After": str(retry)}))

    async def _run_start(self, record: EngineRecord) -> None:
        proc = record.process
        waking = proc.state is State.ASLEEP
        if record.retired or self._closing:  # retired between the decision and this task
            record.starting = False
            self.kick()
            return
        try:
            if not waking:
                self.starts += 1
            await proc.ensure_ready()
        except EngineStartError as exc:
            if record.retired or self._closing:
                return  # stopped on purpose; nobody waits for it
            if not waking:  # a failed wake was already counted as a crash (_on_state)
                self.start_failures += 1
                record.history = record_failure(record.history, str(exc), self._clock())
            log.warning("engine %s failed to start (%d in a row)", record.key,
                        record.history.consecutive)
            self._fail_waiters_of(record, f"engine for model '{record.model.name}' "
                                          f"(context {record.variant.ctx_size}) failed to "
                                          f"start: {exc}")
        else:
            record.history = record_ready(record.history, self.policy, self._clock())
        finally:
            record.starting = False
            self.kick()

    async def _run_stop(self, record: EngineRecord, reason: str) -> None:
        try:
            log.info("stopping %s (%s)", record.key, reason)
            record.stop_reason = reason
            before = await self._gpu.used_mb()
            await record.process.stop()
            await self._gpu.wait_released(before, record.vram_mb)
        finally:
            record.stopping = False
            self.kick()

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, drain_s: float) -> None:
        """Refuse new work, let in-flight requests finish (up to ``drain_s``), stop engines."""
        self._closing = True
        self._waiting.fail_all(lambda: EngineUnavailable("lkn is shutting down"))
        deadline = time.monotonic() + drain_s
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight():
            log.warning("shutdown: %d requests still in flight after %.0fs; stopping engines",
                        self.in_flight(), drain_s)
        if self._timer is not None:
            self._timer.cancel()
        failed = await self._table.stop_all()
        await self._tasks.cancel_all()
        self._table.close_logs()
        if failed:  # the state file stays: the next lkn sweeps what could not be stopped
            log.error("shutdown: could not stop %s: %s", ", ".join(k for k, _ in failed),
                      [str(x) for _, x in failed])
        elif self._registry is not None:
            self._registry.close()
