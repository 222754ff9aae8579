"""EngineManager: carries out the scheduler's decisions on real engine processes.

Requests ``acquire()`` a lease on an engine that holds them and ``release()`` it when their answer
is relayed. Every event (arrival, release, start finished or failed, stop finished, crash, timer)
re-runs the pure ``scheduler.decide()``; its Grant/Start/Stop actions are applied here. In-flight
requests are never cut by a swap: the scheduler only evicts engines with nothing in flight.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from .. import scheduler as sched
from ..config import Config, ModelConfig, VariantConfig
from ..errors import EngineUnavailable, GatewayTimeout, QueueFull
from ..selector import VariantInfo
from ..vram import variant_vram_mb
from .base import EngineClient
from .gpu import GpuMonitor
from .process import EngineProcess, EngineStartError, PortPool, Spawn, State

log = logging.getLogger("lkn.manager")

ClientFactory = Callable[[ModelConfig, VariantConfig], EngineClient]

_SCHED_STATE = {State.STARTING: sched.STARTING, State.READY: sched.READY,
                State.STOPPING: sched.STOPPING, State.ASLEEP: sched.ASLEEP}


def default_client_factory(model: ModelConfig, variant: VariantConfig) -> EngineClient:
    if model.engine == "sglang":
        from .sglang import SGLangEngine
        return SGLangEngine(model, variant)
    from .llamacpp import LlamaCppEngine
    return LlamaCppEngine(model, variant)


def engine_identity(model: ModelConfig, variant: VariantConfig) -> tuple[Any, ...]:
    """What a running engine was started from; a reload restarts it only if this changed."""
    return (model.name, model.engine, model.binary, model.args, model.env, model.embeddings,
            model.parallel, model.python, model.tokenizer_path, model.mem_fraction_static,
            variant)


class Lease:
    """The right to send one request to one engine; release it when the answer is relayed."""

    def __init__(self, manager: EngineManager, slot_key: str, process: EngineProcess) -> None:
        self._manager = manager
        self.slot_key = slot_key
        self.process = process
        self.client = process.client
        self.released = False

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._manager._release(self.process)


@dataclass
class _Pending:
    waiter: sched.Waiter
    future: asyncio.Future[str]


class EngineManager:
    def __init__(self, cfg: Config, session: aiohttp.ClientSession, *,
                 client_factory: ClientFactory = default_client_factory,
                 gpu: GpuMonitor | None = None, spawn: Spawn | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._session = session
        self._client_factory = client_factory
        self._gpu = gpu or GpuMonitor()
        self._spawn = spawn
        self._clock = clock
        self.ports = PortPool(*cfg.server.port_range)
        self._procs: dict[str, EngineProcess] = {}      # slot key -> process
        self._specs: dict[str, tuple[ModelConfig, VariantConfig]] = {}
        self._vram: dict[str, int] = {}
        self._retired: set[str] = set()
        self._starting: set[str] = set()
        self._stopping: set[str] = set()
        self._sleeping: set[str] = set()  # releasing memory: no grants until it is asleep
        self._in_flight: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._pending: dict[int, _Pending] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._ids = itertools.count(1)
        self._retired_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._decide_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.starts = 0
        self.start_failures = 0
        # Recent engine state changes (monotonic time, engine, state): for /health and tests.
        self.events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=200)
        self._load_specs(cfg)

    # ------------------------------------------------------------------ config
    def _load_specs(self, cfg: Config) -> None:
        s = cfg.server
        self._specs = {f"{m.name}@{v.ctx_size}": (m, v) for m in cfg.models for v in m.variants}
        for key, (model, variant) in self._specs.items():
            self._vram[key] = variant_vram_mb(model, variant, overhead_mb=s.vram_overhead_mb,
                                              budget_mb=s.vram_budget_mb)

    def reload(self, cfg: Config) -> None:
        """Adopt a new config: unchanged engines keep running; changed or removed ones finish
        their in-flight requests, then stop. Nothing in flight is dropped."""
        new_specs = {f"{m.name}@{v.ctx_size}": (m, v) for m in cfg.models for v in m.variants}
        for key in [k for k in self._procs if k not in self._retired]:
            old, new = self._specs.get(key), new_specs.get(key)
            if (new is not None and old is not None
                    and engine_identity(*old) == engine_identity(*new)):
                continue
            retired_key = f"{key}~retired{next(self._retired_ids)}"
            self._procs[retired_key] = self._procs.pop(key)
            for table in (self._in_flight, self._last_used, self._vram):
                if key in table:
                    table[retired_key] = table.pop(key)  # type: ignore[assignment]
            for marks in (self._starting, self._stopping):
                if key in marks:
                    marks.discard(key)
                    marks.add(retired_key)
            self._retired.add(retired_key)
            log.info("reload: engine %s changed or was removed; it stops once idle", key)
        self.cfg = cfg
        self._load_specs(cfg)
        self._failed.clear()
        self._kick()

    # ------------------------------------------------------------------ queries
    def variants(self, model: ModelConfig) -> list[VariantInfo]:
        return [VariantInfo(key=f"{model.name}@{v.ctx_size}", ctx=v.ctx_size,
                            vram_mb=self._vram[f"{model.name}@{v.ctx_size}"])
                for v in model.variants]

    def ready_process(self, model_name: str) -> EngineProcess | None:
        for key, proc in self._procs.items():
            if (key not in self._retired and key not in self._stopping
                    and proc.state is State.READY and self._specs[key][0].name == model_name):
                return proc
        return None

    def is_loaded(self, model_name: str) -> bool:
        return any(proc.state in (State.READY, State.ASLEEP) and key in self._specs
                   and self._specs[key][0].name == model_name
                   for key, proc in self._procs.items())

    def processes(self) -> list[EngineProcess]:
        return list(self._procs.values())

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for key, proc in sorted(self._procs.items()):
            d = proc.describe()
            d.update(in_flight=self._in_flight.get(key, 0), vram_mb=self._vram.get(key),
                     retired=key in self._retired)
            out.append(d)
        return out

    def queued(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ leases
    async def acquire(self, model: ModelConfig, options: tuple[sched.Option, ...], *,
                      timeout_s: float | None = None) -> Lease:
        s = self.cfg.server
        if self._closing:
            raise EngineUnavailable("lkn is shutting down and accepts no new requests")
        failed = self._failed.get(model.name)
        if failed and self._clock() - failed[0] < s.failed_start_cooldown_s:
            raise EngineUnavailable(f"model '{model.name}' failed to start "
                                    f"{self._clock() - failed[0]:.0f}s ago: {failed[1]}")
        queued = sum(1 for p in self._pending.values() if p.waiter.model == model.name)
        if not sched.admit(queued, s.max_queue_per_model):
            raise QueueFull(f"{queued} requests are already queued for model '{model.name}'",
                            headers={"Retry-After": "1"})
        waiter = sched.Waiter(next(self._ids), model.name, options, self._clock())
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[waiter.id] = _Pending(waiter, future)
        self._kick()
        timeout = s.queue_timeout_s if timeout_s is None else timeout_s
        try:
            slot_key = await asyncio.wait_for(asyncio.shield(future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            self._pending.pop(waiter.id, None)
            if future.done() and not future.cancelled() and future.exception() is None:
                # granted at the same instant: give it back
                self._release(self._procs[future.result()])
            elif not future.done():
                future.cancel()
            self._kick()
            if isinstance(exc, asyncio.TimeoutError):
                raise GatewayTimeout(f"request waited {timeout:g}s in the queue for model "
                                     f"'{model.name}' without an engine becoming free") from None
            raise
        return Lease(self, slot_key, self._procs[slot_key])

    def _release(self, process: EngineProcess) -> None:
        # By identity: a reload may have moved the process to a retired key since the grant.
        for key in self._keys_of(process):
            self._in_flight[key] = max(0, self._in_flight.get(key, 0) - 1)
            self._last_used[key] = self._clock()
        self._kick()

    # ------------------------------------------------------------------ decisions
    def _kick(self) -> None:
        if self._decide_scheduled:
            return
        self._decide_scheduled = True
        asyncio.get_running_loop().call_soon(self._decide)

    def notify(self, proc: EngineProcess | None = None) -> None:
        if proc is not None:
            self.events.append((self._clock(), proc.key, proc.state.value))
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to decide yet
            self._kick()

    def _slots(self) -> list[sched.Slot]:
        slots = []
        for key, proc in self._procs.items():
            state: str | None
            if key in self._stopping or key in self._sleeping:
                state = sched.STOPPING
            elif key in self._starting:
                state = sched.STARTING
            else:
                state = _SCHED_STATE.get(proc.state)
                if state is None:
                    continue  # stopped or failed: holds nothing
            model, variant = self._spec_of(key)
            slots.append(sched.Slot(key, model.name, proc.client.variant.ctx_size,
                                    self._vram.get(key, 0), state, self._in_flight.get(key, 0),
                                    self._last_used.get(key, 0.0), key in self._retired,
                                    capacity=model.parallel))
        for key in self._starting:
            if key not in self._procs:
                model, variant = self._specs[key]
                slots.append(sched.Slot(key, model.name, variant.ctx_size, self._vram[key],
                                        sched.STARTING, capacity=model.parallel))
        return slots

    def _spec_of(self, key: str) -> tuple[ModelConfig, VariantConfig]:
        proc = self._procs.get(key)
        if proc is not None:
            return proc.client.model, proc.client.variant
        return self._specs[key]

    def _decide(self) -> None:
        self._decide_scheduled = False
        self._forget_retired()
        s = self.cfg.server
        now = self._clock()
        pending = [p.waiter for p in self._pending.values() if not p.future.done()]
        actions = sched.decide(self._slots(), pending, budget_mb=s.vram_budget_mb,
                               max_engines=s.max_loaded_engines, max_wait_s=s.max_queue_wait_s,
                               now=now)
        for action in actions:
            if isinstance(action, sched.Grant):
                p = self._pending.pop(action.waiter)
                self._in_flight[action.key] = self._in_flight.get(action.key, 0) + 1
                self._last_used[action.key] = now
                p.future.set_result(action.key)
            elif isinstance(action, sched.Start):
                self._starting.add(action.key)
                self._spawn_task(self._run_start(action.key))
            elif isinstance(action, sched.Stop):
                self._stopping.add(action.key)
                self._spawn_task(self._run_stop(action.key, action.reason))
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        bound = self.cfg.server.max_queue_wait_s
        due = [p.waiter.arrived + bound for p in self._pending.values()
               if p.waiter.arrived + bound > now]
        if due:
            self._timer = asyncio.get_running_loop().call_later(min(due) - now + 0.001,
                                                                self._kick)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _process(self, key: str) -> EngineProcess:
        proc = self._procs.get(key)
        if proc is None:
            model, variant = self._specs[key]
            s = self.cfg.server
            kwargs: dict[str, Any] = {}
            if self._spawn is not None:
                kwargs["spawn"] = self._spawn
            proc = EngineProcess(self._client_factory(model, variant), ports=self.ports,
                                 session=self._session, start_timeout_s=s.engine_start_timeout_s,
                                 stop_grace_s=s.stop_grace_s, log_dir=s.log_dir,
                                 on_change=self.notify, clock=self._clock, **kwargs)
            self._procs[key] = proc
        return proc

    def _keys_of(self, proc: EngineProcess) -> list[str]:
        return [k for k, p in self._procs.items() if p is proc]

    async def _run_start(self, key: str) -> None:
        model = self._specs[key][0]
        proc = self._process(key)
        try:
            if proc.state is not State.ASLEEP:
                self.starts += 1
            await proc.ensure_ready()
            self._failed.pop(model.name, None)
        except EngineStartError as exc:
            self.start_failures += 1
            self._failed[model.name] = (self._clock(), str(exc))
            for wid, p in list(self._pending.items()):
                if p.waiter.model == model.name and not p.future.done():
                    p.future.set_exception(EngineUnavailable(
                        f"engine for model '{model.name}' failed to start: {exc}"))
                    del self._pending[wid]
        finally:
            for k in [key, *self._keys_of(proc)]:
                self._starting.discard(k)
            self._kick()

    async def _run_stop(self, key: str, reason: str) -> None:
        proc = self._procs[key]
        vram = self._vram.get(key, 0)
        try:
            log.info("stopping %s (%s)", key, reason)
            before = await self._gpu.used_mb()
            await proc.stop()
            await self._gpu.wait_released(before, vram)
        finally:
            for k in [key, *self._keys_of(proc)]:
                self._stopping.discard(k)
            self._forget_retired()
            self._kick()

    def _forget_retired(self) -> None:
        for key in list(self._retired):
            proc = self._procs[key]
            if (proc.state in (State.STOPPED, State.FAILED) and key not in self._stopping
                    and key not in self._starting and not self._in_flight.get(key)):
                self._retired.discard(key)
                del self._procs[key]
                self._vram.pop(key, None)
                proc.logs.close()

    async def sleep_idle(self) -> None:
        """Put engines whose model sleeps when idle to sleep (release GPU memory, keep running)."""
        now = self._clock()
        for key, proc in list(self._procs.items()):
            model = proc.client.model
            if (model.sleep_when_idle_s is None or not proc.client.supports_sleep
                    or proc.state is not State.READY or self._in_flight.get(key, 0)
                    or key in self._stopping or key in self._starting
                    or now - self._last_used.get(key, now) < model.sleep_when_idle_s):
                continue
            # Marked before the await: no request is granted to it while it releases memory.
            self._sleeping.add(key)
            try:
                await proc.sleep()
            except Exception as exc:
                log.warning("could not put %s to sleep: %s", key, exc)
            finally:
                self._sleeping.discard(key)
        self._kick()

    # ------------------------------------------------------------------ shutdown
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    async def shutdown(self, drain_s: float) -> None:
        """Refuse new work, let in-flight requests finish (up to ``drain_s``), stop engines."""
        self._closing = True
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(EngineUnavailable("lkn is shutting down"))
        self._pending.clear()
        deadline = self._clock() + drain_s
        while self.in_flight() and self._clock() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight():
            log.warning("shutdown: %d requests still in flight after %.0fs; stopping engines",
                        self.in_flight(), drain_s)
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.gather(*(p.stop() for p in self._procs.values()), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in self._procs.values():
            proc.logs.close()
