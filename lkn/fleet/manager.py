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
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Coroutine

import aiohttp

from lkn.fleet import scheduler as sched
from lkn.config import Config, ModelConfig, VariantConfig
from lkn.fleet.balance import Backend
from lkn.fleet.balance import order as balance_order
from lkn.fleet.breaker import Breaker, BreakerPolicy
from lkn.errors import (BadRequest, EngineUnavailable, GatewayTimeout, LknError, ModelNotFound,
                      QueueFull)
from lkn.ops.events import EventBus
from lkn.fleet.failures import FailurePolicy, record_failure, record_ready
from lkn.fleet.model_selector import ModelSelector
from lkn.fleet.selector import VariantInfo
from lkn.engines.vram import variant_vram_mb
from lkn.engines.base import EngineClient
from lkn.engines.footprint import Footprint
from lkn.engines.footprint_store import FootprintStore, footprint_key
from lkn.engines.gpu import GpuMonitor
from lkn.engines.process import EngineProcess, EngineStartError, PortPool, Spawn, State, StateCallback
from lkn.fleet.records import Demand, EngineRecord, Lease, engine_identity, variant_key
from lkn.engines.remote import RemoteEngine, RemoteProcess
from lkn.engines.registry import EngineRegistry

log = logging.getLogger("lkn.manager")

ClientFactory = Callable[[ModelConfig, VariantConfig], EngineClient]
ProcessFactory = Callable[[EngineClient, StateCallback], EngineProcess]

__all__ = ["Demand", "EngineManager", "EngineRecord", "Lease"]


def default_client_factory(model: ModelConfig, variant: VariantConfig) -> EngineClient:
    if model.upstream is not None:
        return RemoteEngine(model, variant)
    if model.engine == "command":
        from lkn.engines.command import CommandEngine
        return CommandEngine(model, variant)
    if model.engine == "sglang":
        from lkn.engines.sglang import SGLangEngine
        return SGLangEngine(model, variant)
    from lkn.engines.llamacpp import LlamaCppEngine
    return LlamaCppEngine(model, variant)


def failure_policy(cfg: Config) -> FailurePolicy:
    s = cfg.server
    return FailurePolicy(base_s=s.restart_backoff_s, cap_s=s.restart_backoff_max_s,
                         max_failures=s.max_start_failures,
                         failed_retry_s=s.failed_start_cooldown_s)


@dataclass
class _Pending:
    waiter: sched.Waiter
    demand: Demand
    deadline: float
    future: asyncio.Future[EngineRecord]


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
        self._client_factory = client_factory
        self._gpu = gpu or GpuMonitor()
        self._spawn = spawn
        self._registry = registry
        self._clock = clock
        self._process_factory = process_factory or self._new_process
        self.ports = PortPool(*cfg.server.port_range)
        # Footprints measured at earlier starts, also by an earlier lkn (its state directory).
        self._footprints = FootprintStore(registry.dir if registry is not None else None)
        self.policy = failure_policy(cfg)
        self._ids = itertools.count(1)
        self._active: dict[str, EngineRecord] = {}   # "model@ctx" of the running config
        self._retired: list[EngineRecord] = []       # draining, then stopped and forgotten
        self._pending: dict[int, _Pending] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._decide_scheduled = False
        self._watchers: list[asyncio.Future[None]] = []  # woken after every decision
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.generation = 1
        self.breakers: dict[str, Breaker] = {}  # by backend name
        self._turns: dict[str, int] = {}        # round robin's position, per model
        # Told of every backend answer (model, backend, ok): the metrics' per-backend counts.
        self.on_backend: Callable[[str, str, bool], None] | None = None
        self._rng = random.Random()
        self.starts = 0
        self.start_failures = 0
        # Errors no code path expected (a bug or an engine doing something new): logged, turned
        # into 503s for the waiting requests, and kept here for /health and the tests.
        self.unexpected: collections.deque[str] = collections.deque(maxlen=50)
        # Recent engine state changes (monotonic time, engine, state): for /health and tests.
        self.events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=200)
        self._active = {variant_key(m, v): self._new_record(m, v)
                        for p in cfg.models for m in p.engine_models for v in m.variants}

    # ------------------------------------------------------------------ records
    def _new_process(self, client: EngineClient, on_change: StateCallback) -> EngineProcess:
        if isinstance(client, RemoteEngine):  # nothing to spawn: a server elsewhere
            remote: Any = RemoteProcess(client, session=self._session, on_change=on_change,
                                        clock=self._clock)
            return remote  # the same surface as EngineProcess, as far as the manager looks
        s = self.cfg.server
        kwargs: dict[str, Any] = {}
        if self._spawn is not None:
            kwargs["spawn"] = self._spawn
        return EngineProcess(client, ports=self.ports, session=self._session,
                             start_timeout_s=s.engine_start_timeout_s,
                             stop_grace_s=s.stop_grace_s, log_dir=s.log_dir,
                             on_change=on_change, registry=self._registry, clock=self._clock,
                             log_max_bytes=int(s.log_max_mb * 1024 * 1024),
                             log_keep=s.log_keep, **kwargs)

    def _vram(self, model: ModelConfig, variant: VariantConfig,
              client: EngineClient) -> tuple[int, int, float | None]:
        """(the VRAM need the scheduler uses, the estimate from the files, the measured
        footprint in MiB or None). A measurement replaces the estimate, an explicit
        ``vram_mb`` both; the client is told to measure while neither is known."""
        s = self.cfg.server
        estimate = variant_vram_mb(model, variant, overhead_mb=s.vram_overhead_mb,
                                   budget_mb=s.vram_budget_mb)
        measured = (self._footprints.get(self._footprint_key(client))
                    if variant.vram_mb is None and client.report_markers else None)
        client.learn_footprint = bool(client.report_markers) and variant.vram_mb is None \
            and measured is None
        if measured is None:
            return estimate, estimate, None
        return self._need_mb(measured), estimate, measured.mib

    def _need_mb(self, footprint: Footprint) -> int:
        # On a GPU the engine's buffers leave out the driver's own context and kernels (~600 MiB
        # per process on an H200, bench/gpu_vram): vram_overhead_mb stays for that part.
        extra = self.cfg.server.vram_overhead_mb if footprint.on_accelerator else 0
        return math.ceil(footprint.mib) + extra

    @staticmethod
    def _footprint_key(client: EngineClient) -> str:
        return footprint_key(engine_identity(client), client.variant.model_file)

    def _learn_footprint(self, record: EngineRecord) -> None:
        """The engine just became ready after a start that reported its buffers."""
        client = record.process.client
        client.learn_footprint = False  # its next starts run at the default log level
        footprint = client.footprint(record.process.start_report)
        if footprint is None:
            log.warning("engine %s: no memory report at start; keeping the estimate (%d MiB)",
                        record.key, record.vram_mb)
            return
        v = record.variant
        self._footprints.put(self._footprint_key(client), footprint, variant=record.key,
                             model_file=v.model_file, ctx_size=v.ctx_size,
                             parallel=record.model.parallel, cache_type=v.cache_type)
        record.vram_mb, record.vram_measured_mb = self._need_mb(footprint), footprint.mib
        log.info("engine %s: measured footprint %.2f MiB (estimate %s MiB); using %d MiB",
                 record.key, footprint.mib, record.vram_estimate_mb, record.vram_mb)

    def _new_record(self, model: ModelConfig, variant: VariantConfig,
                    client: EngineClient | None = None) -> EngineRecord:
        client = client or self._client_factory(model, variant)
        holder: list[EngineRecord] = []
        process = self._process_factory(
            client, lambda proc, old: self._on_state(holder[0], old) if holder else None)
        vram_mb, estimate, measured = self._vram(model, variant, client)
        record = EngineRecord(next(self._ids), model, variant, process, vram_mb,
                              engine_identity(client))
        record.vram_estimate_mb, record.vram_measured_mb = estimate, measured
        holder.append(record)
        return record

    def records(self) -> list[EngineRecord]:
        return [*self._active.values(), *self._retired]

    # ------------------------------------------------------------------ reload
    def reload(self, cfg: Config) -> None:
        """Adopt a new config. Unchanged engines (same identity) keep running; changed or
        removed ones are retired: their in-flight requests finish, then they stop (a start in
        progress is stopped at once). Queued requests are re-planned against the new config."""
        self.cfg = cfg
        self.policy = failure_policy(cfg)
        active: dict[str, EngineRecord] = {}
        for model in (m for p in cfg.models for m in p.engine_models):
            for variant in model.variants:
                key = variant_key(model, variant)
                old = self._active.get(key)
                fresh = self._client_factory(model, variant)
                if old is not None and old.identity == engine_identity(fresh):
                    vram_mb, estimate, measured = self._vram(model, variant,
                                                             old.process.client)
                    old.adopt(model, variant, vram_mb,
                              start_timeout_s=cfg.server.engine_start_timeout_s,
                              stop_grace_s=cfg.server.stop_grace_s)
                    old.vram_estimate_mb, old.vram_measured_mb = estimate, measured
                    active[key] = old
                else:
                    active[key] = self._new_record(model, variant, fresh)
        for key, old in self._active.items():
            if active.get(key) is not old:
                old.retired = True
                self._retired.append(old)
                log.info("reload: engine %s changed or was removed; it stops once idle", key)
                # A start in progress is cut short, unless requests from before a crash still
                # hold the record: then it drains like any retired engine.
                if old.starting and not old.stopping and not old.in_flight:
                    old.stopping = True
                    self._supervise(self._run_stop(old, "retired while starting"), old, "stop")
        self._active = active
        self.generation += 1
        self._replan()
        self._kick()

    def _replan(self) -> None:
        """Queued requests against the new config: a vanished model is a 404, a changed one
        gets its variants again (maybe a 400 because it no longer fits)."""
        now = self._clock()
        for wid, p in list(self._pending.items()):
            if p.future.done():
                continue
            model = self.cfg.resolve(p.waiter.model)
            try:
                if model is None:
                    raise ModelNotFound(f"The model '{p.waiter.model}' was removed from the "
                                        f"config while this request waited", param="model")
                options = self._options(model, p.demand, now)
            except LknError as exc:
                del self._pending[wid]
                p.future.set_exception(exc)
                continue
            p.waiter = replace(p.waiter, model=model.name, options=options)

    # ------------------------------------------------------------------ queries
    def _records_of(self, model: ModelConfig) -> list[EngineRecord]:
        return [self._active[variant_key(m, v)] for m in model.engine_models for v in m.variants]

    def variants(self, model: ModelConfig) -> list[VariantInfo]:
        return [VariantInfo(r.slot_id, r.variant.ctx_size, r.vram_mb, r.model.upstream is None,
                            r.model.name if model.backends else "")
                for r in self._records_of(model)]

    def ready_process(self, model_name: str) -> EngineProcess | None:
        for r in self._active.values():
            if (r.model.public == model_name and r.sched_state() == sched.READY):
                return r.process
        return None

    def is_loaded(self, model_name: str) -> bool:
        return any(r.model.public == model_name
                   and r.process.state in (State.READY, State.ASLEEP)
                   for r in self._active.values())

    # ------------------------------------------------------------------ backends
    def report(self, record: EngineRecord, ok: bool, *, active: bool = False) -> None:
        """A backend's answer (before the first byte) for its circuit breaker. An active
        health check counts only when it fails: a server whose health path answers while its
        completions fail must still open."""
        if record.model.parent is None:
            return
        if active and ok:
            return
        name, policy, now = record.model.name, record.model.breaker, self._clock()
        if self.on_backend is not None and not active:
            self.on_backend(record.model.parent, name, ok)
        before = self.breakers.get(name, Breaker())
        after = before.record(ok, policy, now)
        self.breakers[name] = after
        if after.state != before.current(policy, now):
            log.warning("backend %s: circuit %s", name, after.current(policy, now))
            self.bus.publish("breaker", backend=name, model=record.model.parent,
                             state=after.current(policy, now))
            self._kick()

    async def check_backends(self) -> None:
        """Active health: each running backend's health check feeds its breaker (an open
        circuit closes again through requests once it is half-open)."""
        running = [r for r in self._active.values()
                   if r.model.parent is not None and r.sched_state() == sched.READY]

        async def one(record: EngineRecord) -> None:
            proc = record.process
            try:
                ok = (await proc.client.check_ready(self._session, proc.base_url)).ready
            except Exception:  # unreachable, timed out, a missing key: all the same here
                ok = False
            self.report(record, ok, active=True)

        await asyncio.gather(*(one(r) for r in running))

    def _in_flight_of(self, model: ModelConfig) -> int:
        return sum(r.in_flight for r in self._records_of(model))

    def _backend_allowed(self, group: str, policy: BreakerPolicy, now: float) -> bool:
        return self.breakers.get(group, Breaker()).allows(policy, now)

    def backend_status(self, model: ModelConfig) -> list[dict[str, Any]]:
        now = self._clock()
        return [{"backend": b.name, "weight": b.weight,
                 "upstream": b.upstream.url if b.upstream else None,
                 "in_flight": self._in_flight_of(b),
                 "breaker": self.breakers.get(b.name, Breaker()).describe(b.breaker, now)}
                for b in model.backends]

    def _prefer(self, model: ModelConfig, key: str | None) -> tuple[str, ...]:
        if not model.backends:
            return ()
        turn = self._turns[model.name] = self._turns.get(model.name, -1) + 1  # per model
        backends = [Backend(b.name, b.weight, self._in_flight_of(b)) for b in model.backends]
        return tuple(balance_order(model.balance, backends, turn=turn, rng=self._rng,
                                   key=key))

    def processes(self) -> list[EngineProcess]:
        return [r.process for r in self.records() if r.process.state is not State.STOPPED]

    def describe(self) -> list[dict[str, Any]]:
        """Every configured variant (stopped ones too), and retired engines until they are
        gone."""
        now = self._clock()
        return [r.describe(self.policy, now) for r in sorted(self.records(), key=lambda r: r.id)]

    def queued(self) -> int:
        return len(self._pending)

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.records())

    # ------------------------------------------------------------------ leases
    def _options(self, model: ModelConfig, demand: Demand,
                 now: float) -> tuple[sched.Option, ...]:
        options = self.selector.options(model, demand)
        if model.backends:  # open circuits and backends this request already failed on
            options = tuple(o for o in options if o.group not in demand.exclude
                            and self._backend_allowed(o.group, model.breaker, now))
            if not options:
                raise EngineUnavailable(
                    f"no backend of model '{model.name}' can take the request now (circuit "
                    f"open, or it failed on each already)", headers={"Retry-After": "1"})
        if demand.ctx is not None:  # an operator's load of one variant
            options = tuple(o for o in options if o.ctx == demand.ctx)
            if not options:
                raise BadRequest(f"model '{model.name}' has no variant with context "
                                 f"{demand.ctx} that fits the VRAM budget", param="ctx")
        by_id = {r.slot_id: r for r in self._records_of(model)}
        usable = tuple(o for o in options if not by_id[o.key].refusing(self.policy, now))
        if usable:
            return usable
        worst = by_id[options[0].key]
        retry = max(1, math.ceil(worst.history.retry_at(self.policy) - now))
        raise EngineUnavailable(
            f"engine {worst.key} failed {worst.history.consecutive} times in a row and is "
            f"FAILED; next try in {retry}s: {worst.history.last_error}",
            headers={"Retry-After": str(retry)})

    async def acquire(self, model: ModelConfig, demand: Demand, *,
                      timeout_s: float | None = None, arrived: float | None = None) -> Lease:
        """Queue for an engine of ``model``. ``arrived`` (this manager's clock): when the request
        first reached lkn, for a request that comes back (an escalation): it queues by that
        time, not as the newest, so the wait bound still holds for it."""
        s = self.cfg.server
        if self._closing:
            raise EngineUnavailable("lkn is shutting down and accepts no new requests")
        # The caller resolved the model before it counted tokens; a reload may have come since.
        current = self.cfg.resolve(model.name)
        if current is None:
            raise ModelNotFound(f"The model '{model.name}' was removed from the config while "
                                f"this request was being prepared", param="model")
        model = current
        now = self._clock()
        options = self._options(model, demand, now)
        queued = sum(1 for p in self._pending.values() if p.waiter.model == model.name)
        if not sched.admit(queued, s.max_queue_per_model):
            raise QueueFull(f"{queued} requests are already queued for model '{model.name}'",
                            headers={"Retry-After": "1"})
        prefer = self._prefer(model, demand.sticky_key)
        if prefer:
            options = tuple(sorted(options, key=lambda o: (prefer.index(o.group), o.ctx)))
        waiter = sched.Waiter(next(self._ids), model.name, options,
                              now if arrived is None else min(arrived, now), prefer=prefer)
        future: asyncio.Future[EngineRecord] = asyncio.get_running_loop().create_future()
        timeout = s.queue_timeout_s if timeout_s is None else timeout_s
        self._pending[waiter.id] = _Pending(waiter, demand, now + timeout, future)
        self._kick()
        try:
            record = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The client went away while queued; a grant made at the same instant goes back.
            self._pending.pop(waiter.id, None)
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())
            elif not future.done():
                future.cancel()
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise GatewayTimeout(f"{what} did not finish within {timeout_s:g}s")
            watcher: asyncio.Future[None] = loop.create_future()
            self._watchers.append(watcher)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watcher, remaining)

    def mark_unloading(self, model: ModelConfig) -> list[EngineRecord]:
        """No more grants to the model's running engines; each stops once idle."""
        records = [r for r in self._records_of(model) if r.running()]
        for r in records:
            r.unloading = True
        self._kick()
        return records

    def force_stop(self, record: EngineRecord, reason: str) -> None:
        """Stop now, in-flight requests or not (their streams end with an error event)."""
        if record.stopping or not record.running():
            return
        record.stopping = True
        self._supervise(self._run_stop(record, reason), record, "stop")

    def stopped_since(self, marks: dict[EngineRecord, int]) -> bool:
        """Whether each record stopped (or failed) at least once since ``stops`` was read into
        ``marks``, or was not running then; a request may have started it again since."""
        return all(r.stops > n or (not r.running() and not r.unloading)
                   for r, n in marks.items())

    async def sleep_engine(self, record: EngineRecord) -> bool:
        """Release the engine's memory once its in-flight requests are done (no new grants
        meanwhile); the next request wakes it. False if the engine declined (busy inside, or
        no longer ready)."""
        record.releasing = True
        try:
            await self.wait_until(lambda: not record.in_flight, self.cfg.server.request_timeout_s,
                                  f"draining {record.key}")
        except BaseException:
            record.releasing = False
            self._kick()
            raise
        return await self._sleep(record)

    def waiting_on(self, model_name: str) -> str:
        """What a request for the model waits for, for people: an engine starting, or a
        place in the queue."""
        for r in self.records():
            if r.model.public == model_name and r.sched_state() == sched.STARTING:
                return f"loading {r.key}"
        for r in self.records():
            if r.model.public == model_name and r.sched_state() == sched.STOPPING:
                return f"waiting for {r.key} to stop"
        return f"queued for {model_name}"

    def unload_candidates(self, min_idle_s: float = 60.0) -> list[dict[str, Any]]:
        """Ready engines, not pinned, idle for ``min_idle_s`` or more: longest idle first."""
        now = self._clock()
        out = [{"engine": r.slot_id, "key": r.key, "idle_s": round(now - r.last_used, 1),
                "vram_mb": r.vram_mb}
               for r in self._active.values()
               if r.sched_state() == sched.READY and not r.in_flight and not r.model.pinned
               and now - r.last_used >= min_idle_s]
        return sorted(out, key=lambda d: -d["idle_s"])

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
            self._learn_footprint(record)
        if proc.state in (State.STOPPED, State.FAILED):
            record.unloading = False  # unloaded: the next request may start it again
            record.stops += 1
        elif proc.state is State.STARTING:
            record.stop_reason = ""
        self.bus.publish("engine", engine=record.slot_id, key=record.key,
                         model=record.model.name, ctx=record.variant.ctx_size,
                         state=proc.state.value, previous=old.value,
                         reason=(record.stop_reason if proc.state in (State.STOPPING,
                                                                       State.STOPPED)
                                 else proc.last_error if proc.state is State.FAILED else ""),
                         vram_mb=record.vram_mb)
        if proc.state is State.FAILED and old in (State.READY, State.ASLEEP):
            record.crashes += 1
            record.history = record_failure(record.history, proc.last_error, self._clock())
            log.warning("engine %s crashed (%d in a row); it restarts on demand", record.key,
                        record.history.consecutive)
        self.kick()

    def _decide(self) -> None:
        self._decide_scheduled = False
        self._forget_retired()
        s = self.cfg.server
        now = self._clock()
        self._expire(now)
        by_id = {r.slot_id: r for r in self.records()}
        slots = [slot for r in by_id.values() if (slot := r.slot()) is not None]
        # Variants waiting out a backoff are left out of the options for now, so a request
        # that another variant can hold is served by it; the timer comes back at retry time.
        waiters = []
        for p in self._pending.values():
            if p.future.done():
                continue
            usable = tuple(o for o in p.waiter.options
                           if o.key in by_id and by_id[o.key].startable(self.policy, now))
            # a copy only when an option is left out: this runs on every event
            waiters.append(p.waiter if len(usable) == len(p.waiter.options)
                           else replace(p.waiter, options=usable))
        actions = sched.decide(slots, waiters, budget_mb=s.vram_budget_mb,
                               max_engines=s.max_loaded_engines, max_wait_s=s.max_queue_wait_s,
                               now=now)
        for action in actions:
            if isinstance(action, sched.Grant):
                p = self._pending.pop(action.waiter)
                record = by_id[action.key]
                record.in_flight += 1
                record.last_used = now
                p.future.set_result(record)
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
                record.stopping = True
                self._supervise(self._run_stop(record, reason), record, "stop")
        self._arm_timer(now)
        watchers, self._watchers = self._watchers, []
        for w in watchers:
            if not w.done():
                w.set_result(None)

    def _expire(self, now: float) -> None:
        for wid, p in list(self._pending.items()):
            if now >= p.deadline and not p.future.done():
                del self._pending[wid]
                waited = now - p.waiter.arrived
                p.future.set_exception(GatewayTimeout(
                    f"request waited {waited:.0f}s in the queue for model '{p.waiter.model}' "
                    f"without an engine becoming free"))

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        bound = self.cfg.server.max_queue_wait_s
        due = [p.deadline for p in self._pending.values()]
        due += [p.waiter.arrived + bound for p in self._pending.values()]
        waiting = {o.key for p in self._pending.values() for o in p.waiter.options}
        due += [r.history.retry_at(self.policy) for r in self.records()
                if r.slot_id in waiting and not r.running()]
        due += [r.stop_retry_at for r in self.records()]
        due = [t for t in due if t > now]
        if due:
            self._timer = asyncio.get_running_loop().call_later(min(due) - now + 0.001,
                                                                self._kick)

    # ------------------------------------------------------------------ tasks
    def _supervise(self, coro: Coroutine[Any, Any, None], record: EngineRecord,
                   what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Handled in the task's own step, before the decision its ``finally`` asked
                # for runs: that decision must already see the failure and its backoff.
                self._unexpected(record, what, exc)

        # A fresh context: an operator's request that triggered it does not own the task.
        task = asyncio.create_task(guarded(), name=f"lkn {what} {record.slot_id}",
                                   context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for wid, p in list(self._pending.items()):
            keys = [o.key for o in p.waiter.options]
            if record.slot_id not in keys or p.future.done():
                continue
            if any(k != record.slot_id and k in by_id and by_id[k].startable(self.policy, now)
                   for k in keys):
                continue  # another variant holds it: failures stay local
            del self._pending[wid]
            p.future.set_exception(EngineUnavailable(message,
                                                     headers={"Retry-After": str(retry)}))

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

    def _forget_retired(self) -> None:
        keep = []
        for r in self._retired:
            if (r.process.state in (State.STOPPED, State.FAILED) and not r.stopping
                    and not r.starting and not r.in_flight):
                r.process.logs.close()
            else:
                keep.append(r)
        self._retired = keep

    async def sleep_idle(self) -> None:
        """Idle engines give their memory back: engines that can sleep (SGLang with
        ``sleep_when_idle_s``) release it and keep running; others with ``idle_unload_s`` stop,
        counted from their last finished request. The next request starts or wakes them."""
        now = self._clock()
        for record in list(self._active.values()):
            unload = record.model.idle_unload_s
            if (unload and not record.model.pinned and record.model.upstream is None
                    and not record.process.client.supports_sleep
                    and record.sched_state() == sched.READY and not record.in_flight
                    and now - max(record.last_used, record.history.ready_at or 0.0) >= unload):
                record.stopping = True
                self._supervise(self._run_stop(record, f"idle for {unload:g}s"), record, "stop")
        for record in list(self._active.values()):
            model, proc = record.model, record.process
            if (model.sleep_when_idle_s is None or model.pinned or not proc.client.supports_sleep
                    or record.sched_state() != sched.READY or record.in_flight
                    or now - record.last_used < model.sleep_when_idle_s):
                continue
            try:
                await self._sleep(record)
            except Exception as exc:
                log.warning("could not put %s to sleep: %s", record.key, exc)
        self.kick()

    async def _sleep(self, record: EngineRecord) -> bool:
        # Marked before the await: no request is granted to it while it releases memory.
        record.releasing = True
        try:
            return await record.process.sleep()
        finally:
            record.releasing = False
            self.kick()

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, drain_s: float) -> None:
        """Refuse new work, let in-flight requests finish (up to ``drain_s``), stop engines."""
        self._closing = True
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(EngineUnavailable("lkn is shutting down"))
        self._pending.clear()
        deadline = time.monotonic() + drain_s
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight():
            log.warning("shutdown: %d requests still in flight after %.0fs; stopping engines",
                        self.in_flight(), drain_s)
        if self._timer is not None:
            self._timer.cancel()
        stops = await asyncio.gather(*(r.process.stop() for r in self.records()),
                                     return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self.records():
            r.process.logs.close()
        failed = [r.key for r, result in zip(self.records(), stops)
                  if isinstance(result, BaseException)]
        if failed:  # the state file stays: the next lkn sweeps what could not be stopped
            log.error("shutdown: could not stop %s: %s", ", ".join(failed),
                      [str(x) for x in stops if isinstance(x, BaseException)])
        elif self._registry is not None:
            self._registry.close()

