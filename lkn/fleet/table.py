"""EngineTable: the engine records the manager works on, and what can be read from them.

One record per variant of the config in force (by its name, ``model@ctx``), built with its
client, its process and its VRAM need; plus the records a reload retired, kept until they have
drained and stopped. A reload keeps a record whose engine would be started from the same
command line (its identity) and builds a new one otherwise. The table decides nothing: the
manager grants, starts and stops.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterator

from lkn.config import Config, ModelConfig, VariantConfig
from lkn.engines.base import EngineClient
from lkn.engines.process import State
from lkn.fleet import scheduler as sched
from lkn.fleet.failures import FailurePolicy
from lkn.fleet.footprints import Footprints
from lkn.fleet.processes import ClientFactory, ProcessFactory
from lkn.fleet.records import EngineRecord, Process, engine_identity
from lkn.fleet.selector import VariantInfo
from lkn.fleet.learned import Prior, prior

log = logging.getLogger("lkn.manager")

OnState = Callable[[EngineRecord, State], None]


class EngineTable:
    def __init__(self, cfg: Config, *, client_factory: ClientFactory,
                 process_factory: ProcessFactory, footprints: Footprints,
                 ids: Iterator[int], on_state: OnState) -> None:
        self._client_factory = client_factory
        self._process_factory = process_factory
        self._footprints = footprints
        self._ids = ids  # shared with the manager's waiters: one sequence, as it always was
        self._on_state = on_state
        self._active: dict[str, EngineRecord] = {}   # "model@ctx" of the running config
        self._retired: list[EngineRecord] = []       # draining, then stopped and forgotten
        self._active = {m.variant_name(v): self._new_record(cfg, m, v)
                        for p in cfg.models for m in p.engine_models for v in m.variants}

    def _new_record(self, cfg: Config, model: ModelConfig, variant: VariantConfig,
                    client: EngineClient | None = None) -> EngineRecord:
        client = client or self._client_factory(model, variant)
        holder: list[EngineRecord] = []  # the process exists before its record does
        process = self._process_factory(
            client, lambda proc, old: self._on_state(holder[0], old) if holder else None)
        need = self._footprints.need(cfg.server, model, variant, client)
        record = EngineRecord(next(self._ids), model, variant, process, need.need_mb,
                              engine_identity(client))
        need.apply(record)
        holder.append(record)
        return record

    def reload(self, cfg: Config) -> list[EngineRecord]:
        """Records for the new config: an unchanged engine (same identity) keeps its record,
        with the new spec's other settings; a changed or removed one is retired. Returns the
        records this reload retired."""
        active: dict[str, EngineRecord] = {}
        for model in (m for p in cfg.models for m in p.engine_models):
            for variant in model.variants:
                key = model.variant_name(variant)
                old = self._active.get(key)
                fresh = self._client_factory(model, variant)
                if old is not None and old.identity == engine_identity(fresh):
                    need = self._footprints.need(cfg.server, model, variant,
                                                 old.process.client)
                    old.adopt(model, variant, need.need_mb,
                              start_timeout_s=cfg.server.engine_start_timeout_s,
                              stop_grace_s=cfg.server.stop_grace_s)
                    need.apply(old)
                    active[key] = old
                else:
                    active[key] = self._new_record(cfg, model, variant, fresh)
        retired = [old for key, old in self._active.items() if active.get(key) is not old]
        for old in retired:
            old.retired = True
            self._retired.append(old)
            log.info("reload: engine %s changed or was removed; it stops once idle", old.key)
        self._active = active
        return retired

    def forget_retired(self) -> None:
        """Retired records whose engine stopped and that nothing holds any more are gone."""
        keep = []
        for r in self._retired:
            if (r.process.state in (State.STOPPED, State.FAILED) and not r.stopping
                    and not r.starting and not r.in_flight):
                r.process.logs.close()
            else:
                keep.append(r)
        self._retired = keep

    async def stop_all(self) -> list[tuple[str, BaseException]]:
        """Stop every engine at once (shutdown); what could not be stopped, and why."""
        records = self.records()
        stops = await asyncio.gather(*(r.process.stop() for r in records),
                                     return_exceptions=True)
        return [(r.key, result) for r, result in zip(records, stops)
                if isinstance(result, BaseException)]

    def close_logs(self) -> None:
        for r in self.records():
            r.process.logs.close()

    # ------------------------------------------------------------------ reading
    def records(self) -> list[EngineRecord]:
        return [*self._active.values(), *self._retired]

    def active(self) -> list[EngineRecord]:
        """The records of the config in force (no retired ones)."""
        return list(self._active.values())

    def of(self, model: ModelConfig) -> list[EngineRecord]:
        return [self._active[m.variant_name(v)] for m in model.engine_models for v in m.variants]

    def swap_prior(self, default_s: float) -> Prior:
        """What a swap costs an engine that has not started or stopped yet (its processes on
        this box, learned; ``default_s`` before any)."""
        return prior((r.cost for r in self.records() if r.model.upstream is None), default_s)

    def in_flight_of(self, model: ModelConfig) -> int:
        return sum(r.in_flight for r in self.of(model))

    def variants(self, model: ModelConfig) -> list[VariantInfo]:
        return [VariantInfo(r.slot_id, r.variant.ctx_size, r.vram_mb, r.model.upstream is None,
                            r.model.name if model.backends else "")
                for r in self.of(model)]

    def ready_process(self, model_name: str) -> Process | None:
        for r in self._active.values():
            if r.model.public == model_name and r.sched_state() == sched.READY:
                return r.process
        return None

    def is_loaded(self, model_name: str) -> bool:
        return any(r.model.public == model_name
                   and r.process.state in (State.READY, State.ASLEEP)
                   for r in self._active.values())

    def processes(self) -> list[Process]:
        return [r.process for r in self.records() if r.process.state is not State.STOPPED]

    def describe(self, policy: FailurePolicy, now: float) -> list[dict[str, Any]]:
        return [r.describe(policy, now) for r in sorted(self.records(), key=lambda r: r.id)]

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.records())

    def waiting_on(self, model_name: str) -> str:
        """What a request for the model waits for, for people: an engine starting, an engine
        stopping, or a place in the queue."""
        for r in self.records():
            if r.model.public == model_name and r.sched_state() == sched.STARTING:
                return f"loading {r.key}"
        for r in self.records():
            if r.model.public == model_name and r.sched_state() == sched.STOPPING:
                return f"waiting for {r.key} to stop"
        return f"queued for {model_name}"
