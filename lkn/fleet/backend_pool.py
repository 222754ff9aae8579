"""BackendPool: the backends of the models served by several, as the manager sees them.

A circuit breaker per backend (``lkn.fleet.breaker``, pure), the round robin's turn per model and
the random source of the random and weighted strategies (``lkn.fleet.balance``, pure). Requests
and active health checks report each backend's answers here; the manager asks which backends a
request may use (``allowed``) and in which order it should try them (``prefer``).

The pool never kicks the scheduler itself: ``report`` and ``check`` return whether a circuit
changed, and the manager decides what follows.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable, Iterable

import aiohttp

from lkn.config import BreakerPolicy, ModelConfig
from lkn.config.upstreams import redact_url
from lkn.fleet.balance import Backend
from lkn.fleet.balance import order as balance_order
from lkn.fleet.breaker import Breaker
from lkn.fleet.records import EngineRecord
from lkn.ops.events import EventBus

log = logging.getLogger("lkn.manager")

# Requests in flight on one backend (all of its variants): for least_connections and /status.
InFlight = Callable[[ModelConfig], int]


class BackendPool:
    def __init__(self, *, clock: Callable[[], float], bus: EventBus | None = None,
                 rng: random.Random | None = None) -> None:
        self._clock = clock
        self._bus = bus
        self._rng = rng or random.Random()
        self.breakers: dict[str, Breaker] = {}  # by backend name
        self._turns: dict[str, int] = {}        # round robin's position, per model
        # Told of every backend answer (model, backend, ok): the metrics' per-backend counts.
        self.on_backend: Callable[[str, str, bool], None] | None = None

    def report(self, backend: ModelConfig, ok: bool, *, active: bool = False) -> bool:
        """A backend's answer (before the first byte) for its circuit breaker; True when the
        circuit changed state. An active health check counts only when it fails: a server whose
        health path answers while its completions fail must still open."""
        if backend.parent is None:  # a model with one server has no breaker
            return False
        if active and ok:
            return False
        name, policy, now = backend.name, backend.breaker, self._clock()
        if self.on_backend is not None and not active:
            self.on_backend(backend.parent, name, ok)
        before = self.breakers.get(name, Breaker())
        after = before.record(ok, policy, now)
        self.breakers[name] = after
        if after.state == before.current(policy, now):
            return False
        log.warning("backend %s: circuit %s", name, after.current(policy, now))
        if self._bus is not None:
            self._bus.publish("breaker", backend=name, model=backend.parent,
                              state=after.current(policy, now))
        return True

    async def check(self, records: Iterable[EngineRecord],
                    session: aiohttp.ClientSession) -> bool:
        """Active health: each record's health check feeds its backend's breaker (an open
        circuit closes again through requests once it is half-open). True when a circuit
        changed state."""
        async def one(record: EngineRecord) -> bool:
            proc = record.process
            try:
                ok = (await proc.client.check_ready(session, proc.base_url)).ready
            except Exception:  # unreachable, timed out, a missing key: all the same here
                ok = False
            return self.report(record.model, ok, active=True)

        return any(await asyncio.gather(*(one(r) for r in records)))

    def allowed(self, backend: str, policy: BreakerPolicy, now: float) -> bool:
        """Whether the backend's circuit lets a request through now (closed or half-open)."""
        return self.breakers.get(backend, Breaker()).allows(policy, now)

    def prefer(self, model: ModelConfig, in_flight: InFlight,
               key: str | None = None) -> tuple[str, ...]:
        """The order in which a request should try the model's backends; () for a model with
        one server. Each call is one request: round robin moves one further per call."""
        if not model.backends:
            return ()
        turn = self._turns[model.name] = self._turns.get(model.name, -1) + 1  # per model
        backends = [Backend(b.name, b.weight, in_flight(b)) for b in model.backends]
        return tuple(balance_order(model.balance, backends, turn=turn, rng=self._rng,
                                   key=key))

    def status(self, model: ModelConfig, in_flight: InFlight) -> list[dict[str, Any]]:
        """Each backend of the model with its weight, load and circuit, for /status."""
        now = self._clock()
        return [{"backend": b.name, "weight": b.weight,
                 "upstream": redact_url(b.upstream.url) if b.upstream else None,
                 "in_flight": in_flight(b),
                 "breaker": self.breakers.get(b.name, Breaker()).describe(b.breaker, now)}
                for b in model.backends]
