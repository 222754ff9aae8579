"""One record per engine instance, and the lease a request holds on one.

An ``EngineRecord`` is everything the manager knows about one engine of one config generation:
its spec (model + variant), the process that owns the child (or watches a remote server),
requests in flight, last use, VRAM estimate, whether a reload retired it, and its failure
history. Grants and leases carry the record itself, never a key string, so a reload that
replaces a variant can never make a lease point at the wrong engine. The process state is read from the process, never copied;
the record only adds what the manager itself is doing to the engine (starting, stopping,
releasing memory).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from lkn.fleet import planner
from lkn.fleet import scheduler as sched
from lkn.config import ModelConfig, VariantConfig
from lkn.fleet.failures import FailureHistory, FailurePolicy, record_failure
from lkn.fleet.learned import SwapCost
from lkn.engines.base import EngineClient
from lkn.engines.handle import EngineHandle
from lkn.engines.process import State

# What runs an engine: a child process lkn owns, or a server elsewhere that lkn only watches.
Process = EngineHandle  # an EngineProcess lkn spawned, or a RemoteProcess watching a server elsewhere

_SCHED_STATE = {State.STARTING: sched.STARTING, State.READY: sched.READY,
                State.STOPPING: sched.STOPPING, State.ASLEEP: sched.ASLEEP}


def engine_identity(client: EngineClient) -> str:
    """What a running engine was started from: its command line (port left out), its own
    environment and its health settings. A reload restarts an engine only if this changed."""
    return json.dumps({"kind": type(client).__qualname__, "argv": client.argv(0),
                       "env": sorted(client.model.env), "health": client.health_settings()},
                      sort_keys=True, default=str)


@dataclass(frozen=True)
class Demand:
    """What a request needs from a model, kept so that a reload can re-plan a queued request."""
    prompt_tokens: int
    answer_tokens: int | None  # max_tokens / max_completion_tokens as sent, None if absent
    embeddings: bool = False
    ctx: int | None = None  # only this variant (an operator's load)
    min_ctx: int | None = None  # a variant at least this large, if the model has one (Ollama's
                                # num_ctx); else its largest
    exclude: frozenset[str] = frozenset()  # backends this request already failed on
    sticky_key: str | None = None          # for balance = "sticky"
    client_key: str = ""                   # who asks (fair share between keys)
    priority: float = planner.INTERACTIVE  # planner.BATCH .. TOP


class EngineRecord:
    vram_estimate_mb: int | None = None     # from the model's files (lkn.vram)
    vram_measured_mb: float | None = None   # the engine's own report (engines.footprint)

    def __init__(self, record_id: int, model: ModelConfig, variant: VariantConfig,
                 process: Process, vram_mb: int, identity: str) -> None:
        self.id = record_id
        self.model = model
        self.variant = variant
        self.process = process
        self.vram_mb = vram_mb
        self.identity = identity
        self.in_flight = 0
        self.last_used = 0.0
        self.retired = False
        self.unloading = False   # an operator unloads it: no grants, stopped once idle
        self.stop_reason = ""    # why the current or last stop was made (events, logs)
        self.stops = 0           # times it reached STOPPED or FAILED (an unload waits for one)
        self.starting = False    # a start (or wake) task of the manager is running
        self.stopping = False    # a stop task is running
        self.releasing = False   # memory is being released (sleep): no grants meanwhile
        self.stop_retry_at = 0.0  # after a stop that failed unexpectedly: not before this
        self.history = FailureHistory()
        self.crashes = 0
        self.cost = SwapCost()       # its start and stop times, learned (the planner's swap cost)
        self.state_since = 0.0       # when its process entered its current state
        self.ready_since = 0.0       # when it last became ready (its residence counts from here)
        # A client's residency wish (Ollama's keep_alive), in idle seconds before it stops:
        # None: the model's idle_unload_s; 0: once idle; math.inf: never for idleness.
        self.keep_alive_s: float | None = None

    @property
    def key(self) -> str:
        """The variant's name, for people: ``model@ctx``. Not unique across reloads."""
        return self.model.variant_name(self.variant)

    @property
    def slot_id(self) -> str:
        """Unique for the manager's lifetime: the scheduler's name for this engine."""
        return f"{self.key}#{self.id}"

    def adopt(self, model: ModelConfig, variant: VariantConfig, vram_mb: int, *,
              start_timeout_s: float, stop_grace_s: float) -> None:
        """A reload kept this engine (same identity): take the new spec's other settings,
        the process's timeouts included (read at its next start or stop)."""
        self.model, self.variant, self.vram_mb = model, variant, vram_mb
        client = self.process.client
        client.model, client.variant = model, variant
        self.process.start_timeout_s = start_timeout_s
        self.process.stop_grace_s = client.stop_grace_s(stop_grace_s)

    def running(self) -> bool:
        return self.sched_state() is not None

    def sched_state(self) -> str | None:
        if self.stopping or self.releasing:
            return sched.STOPPING
        if self.starting:
            return sched.STARTING
        return _SCHED_STATE.get(self.process.state)

    def slot(self, stop_s: float = 0.0) -> sched.Slot | None:
        """The scheduler's view; ``stop_s``: its stop cost until it has stopped once."""
        state = self.sched_state()
        if state is None:
            return None  # stopped or failed: holds nothing
        # the public model name, as its waiters and arrival rates have it (not a backend's)
        return sched.Slot(self.slot_id, self.model.public, self.variant.ctx_size, self.vram_mb,
                          state, self.in_flight, self.last_used,
                          self.retired or self.unloading, capacity=self.model.parallel,
                          pinned=self.model.pinned and not self.retired,
                          local=self.model.upstream is None, since=self.ready_since,
                          stop_s=self.cost.stop_s(stop_s))

    def refusing(self, policy: FailurePolicy, now: float) -> bool:
        """FAILED and not due for its next try: requests get a fast 503."""
        return (not self.running() and self.history.failed(policy)
                and not self.history.may_start(policy, now))

    def startable(self, policy: FailurePolicy, now: float) -> bool:
        return self.running() or self.history.may_start(policy, now)

    def note_state(self, old: State, now: float) -> bool:
        """Bookkeeping for a state change of its process (from ``old``); True when the change
        was a crash (FAILED after READY or ASLEEP: a failure for the backoff)."""
        state = self.process.state
        if state is State.READY and old is State.STARTING:
            self.cost.started(now - self.state_since)
        if state is State.STOPPED and old is State.STOPPING:
            self.cost.stopped(now - self.state_since)
        if state is State.READY:
            self.ready_since = now
        self.state_since = now
        if state in (State.STOPPED, State.FAILED):
            self.unloading = False  # unloaded: the next request may start it again
            self.keep_alive_s = None  # a client's residency wish ends with the engine
            self.stops += 1
        elif state is State.STARTING:
            self.stop_reason = ""
        if state is State.FAILED and old in (State.READY, State.ASLEEP):
            self.crashes += 1
            self.history = record_failure(self.history, self.process.last_error, now)
            return True
        return False

    def event(self, old: State) -> dict[str, Any]:
        """The bus's ``engine`` event for the state change from ``old`` to the current."""
        state = self.process.state
        reason = (self.stop_reason if state in (State.STOPPING, State.STOPPED)
                  else self.process.last_error if state is State.FAILED else "")
        return {"engine": self.slot_id, "key": self.key, "model": self.model.name,
                "ctx": self.variant.ctx_size, "state": state.value, "previous": old.value,
                "reason": reason, "vram_mb": self.vram_mb}

    def describe(self, policy: FailurePolicy, now: float) -> dict[str, Any]:
        d = self.process.describe()
        h = self.history
        retry = h.retry_at(policy)
        idle = (round(now - self.last_used, 1) if self.last_used and not self.in_flight
                and self.process.state in (State.READY, State.ASLEEP) else None)
        d.update(engine=self.slot_id, model=self.model.public,
                 backend=self.model.name if self.model.parent else None, in_flight=self.in_flight,
                 vram_mb=self.vram_mb, vram_estimate_mb=self.vram_estimate_mb,
                 vram_measured_mb=self.vram_measured_mb, retired=self.retired,
                 unloading=self.unloading, pinned=self.model.pinned, idle_s=idle,
                 crashes=self.crashes, swap_cost=self.cost.describe(),
                 failures={"consecutive": h.consecutive, "failed": h.failed(policy),
                           "retry_in_s": round(max(0.0, retry - now), 1) if retry else 0.0,
                           "last_error": h.last_error or None})
        return d


class Releaser(Protocol):
    """Who takes a lease back: the manager (a Protocol, so records need not import it)."""
    def release(self, record: EngineRecord) -> None: ...


class Lease:
    """The right to send one request to one engine; release it when the answer is relayed."""

    def __init__(self, manager: Releaser, record: EngineRecord) -> None:
        self._manager = manager
        self.record = record
        self.process = record.process
        self.client = record.process.client
        self.released = False

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._manager.release(self.record)
