"""What an operator does to engines by hand (the admin API and the CLI), and preloading.

Each action goes through the scheduler like a request does, so it respects the VRAM budget,
pinning and the wait bound:

- **load**: a request for the model's smallest variant (or the one asked for) that needs no
  tokens: queued, started or swapped in like any other, released at once. The engine then idles
  and counts as used now.
- **unload**: no new grants to the model's engines; each stops once its in-flight requests are
  done (``force``: now, and their streams end with an error event). A request arriving meanwhile
  waits, and starts the engine again after the stop.
- **sleep** / **wake**: engines that can release memory and keep running (SGLang).
- **preload**: the server's ``preload`` models are loaded at boot and after every reload, in
  the background; a failure is logged and shown in the engine's state, never fatal.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from lkn.fleet import scheduler as sched
from lkn.config import ModelConfig
from lkn.errors import BadRequest, EngineUnavailable, LknError
from lkn.fleet.manager import EngineManager
from lkn.engines.process import EngineStartError, State
from lkn.fleet.records import Demand, EngineRecord

log = logging.getLogger("lkn.operations")


class Conflict(LknError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


def _model(manager: EngineManager, name: str) -> ModelConfig:
    return manager.cfg.require(name)


def _brief(record: EngineRecord) -> dict[str, Any]:
    return {"engine": record.slot_id, "key": record.key, "ctx": record.variant.ctx_size,
            "state": record.process.state.value}


async def load(manager: EngineManager, name: str, ctx: int | None = None,
               timeout_s: float | None = None) -> dict[str, Any]:
    model = _model(manager, name)
    if ctx is not None and ctx not in [v.ctx_size for v in model.variants]:
        raise BadRequest(f"model '{model.name}' has no variant with context {ctx}; it has "
                         f"{', '.join(str(v.ctx_size) for v in model.variants)}", param="ctx")
    # No tokens at all: every variant holds it, the smallest that fits comes first.
    lease = await manager.acquire(model, Demand(0, 0, ctx=ctx), timeout_s=timeout_s)
    lease.release()
    return _brief(lease.record)


async def unload(manager: EngineManager, name: str, *, force: bool = False,
                 timeout_s: float) -> dict[str, Any]:
    model = _model(manager, name)
    records = manager.mark_unloading(model)
    marks = {r: r.stops for r in records}
    if force:
        for r in records:
            if r.in_flight:
                manager.force_stop(r, f"unloaded with {r.in_flight} requests in flight (forced)")
    # An engine still starting finishes its start first (requests may be waiting for it),
    # then stops. A request that arrives meanwhile may start it again: that is not waited for.
    await manager.wait_until(lambda: manager.stopped_since(marks), timeout_s,
                             f"unloading {model.name}")
    return {"model": model.name, "stopped": [_brief(r) for r in records]}


def _sleepers(manager: EngineManager, model: ModelConfig) -> list[EngineRecord]:
    records = [r for r in manager.records() if r.model.public == model.name and not r.retired]
    if records and not records[0].process.client.supports_sleep:
        raise BadRequest(f"model '{model.name}' runs on an engine that cannot sleep "
                         f"({model.engine}); use unload to free its memory", param="model")
    return records


async def sleep(manager: EngineManager, name: str) -> dict[str, Any]:
    model = _model(manager, name)
    ready = [r for r in _sleepers(manager, model) if r.sched_state() == sched.READY]
    if not ready:
        raise Conflict(f"model '{model.name}' has no ready engine to put to sleep")
    results = await asyncio.gather(*(manager.sleep_engine(r) for r in ready),
                                   return_exceptions=True)
    for r, result in zip(ready, results):
        if isinstance(result, EngineStartError):  # the release failed: the engine is gone
            raise EngineUnavailable(f"engine {r.key} failed to release its memory and was "
                                    f"stopped: {result}")
        if isinstance(result, BaseException):
            raise result
    declined = [r.key for r, ok in zip(ready, results) if ok is not True]
    if declined:
        raise Conflict(f"{', '.join(declined)} did not go to sleep: the engine still runs "
                       f"requests of its own, or stopped meanwhile")
    return {"model": model.name, "asleep": [_brief(r) for r in ready]}


async def wake(manager: EngineManager, name: str,
               timeout_s: float | None = None) -> dict[str, Any]:
    model = _model(manager, name)
    asleep = [r for r in _sleepers(manager, model) if r.process.state is State.ASLEEP]
    if not asleep:
        raise Conflict(f"model '{model.name}' has no sleeping engine to wake")
    return await load(manager, model.name, asleep[0].variant.ctx_size, timeout_s)


def preload(manager: EngineManager) -> list[asyncio.Task[None]]:
    """Load every ``server.preload`` model in the background."""
    async def one(name: str) -> None:
        try:
            loaded = await load(manager, name)
            log.info("preloaded %s", loaded["key"])
        except LknError as exc:
            log.error("preload of model '%s' failed: %s", name, exc.message)
        except Exception:  # never an unretrieved task exception
            log.exception("preload of model '%s' failed", name)

    return [asyncio.create_task(one(name), name=f"lkn preload {name}",
                                context=contextvars.Context())  # no request's id in its logs
            for name in manager.cfg.server.preload]
