"""What lkn says about itself, as JSON: ``/v1/models``, ``/health``, ``/health/{model}``,
``/ready``, ``/status`` and the metrics' live snapshot.

One read-model of a model's state, ``ModelView``, is the source of both the health of a model
(``ready``, ``asleep``, ``starting``, ``idle``, ``failed``) and its status row (``active``,
``idle``, ``unloaded``, with the dashboard's settings), so the two cannot disagree on which
engines are the model's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lkn.config import ModelConfig
from lkn.fleet.records import EngineRecord
from lkn.gateway.keys import GatewayState, Lifecycle
from lkn.ops.traffic import DEFAULT_WINDOWS


@dataclass(frozen=True)
class ModelView:
    """One configured model at one moment: its engines as ``/status`` lists them and the
    records of those not retired by a reload."""
    name: str
    engines: list[dict[str, Any]]  # describe() rows of its engines and backends
    live: list[EngineRecord]  # its records not retired, backends included

    @classmethod
    def of(cls, state: GatewayState, name: str,
           engines: list[dict[str, Any]] | None = None) -> ModelView:
        rows = state.manager.describe() if engines is None else engines
        return cls(name=name, engines=[e for e in rows if e["model"] == name],
                   live=[r for r in state.manager.records()
                         if r.model.public == name and not r.retired])

    def health(self, state: GatewayState, now: float) -> str:
        """``ready`` (an engine answers now), ``asleep``, ``starting``, ``idle`` (no engine
        running; the next request starts one) or ``failed`` (every variant is FAILED and waits
        out its cooldown: requests get a fast 503)."""
        states = {e["state"] for e in self.engines if not e["retired"]}
        failed = all(r.refusing(state.manager.policy, now) for r in self.live)
        return next((s for s in ("ready", "asleep", "starting") if s in states),
                    "failed" if failed else "idle")

    def activity(self, state: GatewayState) -> str:
        """``active`` (a request in flight), ``idle`` (an engine is up) or ``unloaded``."""
        busy = any(e["in_flight"] for e in self.engines) or any(
            r["model"] == self.name for r in state.inflight.describe())
        loaded = any(e["state"] in ("ready", "asleep", "starting") for e in self.engines)
        return "active" if busy else "idle" if loaded else "unloaded"

    def can_sleep(self) -> bool:
        # Backends (upstreams) never sleep: only the model's own engines count.
        return any(r.process.client.supports_sleep for r in self.live
                   if r.model.name == self.name)


# ------------------------------------------------------------------ /v1/models

# What a model's health says to clients that show load state (Open WebUI, llama.cpp's router).
CLIENT_STATUS = {"ready": "loaded", "starting": "loading", "asleep": "asleep", "failed": "failed",
                 "idle": "unloaded"}


def capabilities(model: ModelConfig) -> list[str]:
    """What a model can be asked: ``completion`` and ``tools`` (any chat model: llama-server's
    templates run with Jinja), ``vision`` (a multimodal projector in its arguments),
    ``embeddings``, ``rerank``."""
    args = list(model.args) + [a for v in model.variants for a in v.args]
    out = [] if model.reranking else ["completion", "tools"]
    if "--mmproj" in args or "-mm" in args:
        out.append("vision")
    if model.embeddings:
        out.append("embeddings")
    if model.reranking:
        out.append("rerank")
    return out


def models_payload(state: GatewayState) -> dict[str, Any]:
    """Every name clients may use (aliases too), with its state (``status``: loaded, loading,
    unloaded, failed or asleep; ``loaded``), its largest context, its capabilities, and lkn's
    notes on each."""
    created = int(time.time() - (time.monotonic() - state.started))
    now, engines = time.monotonic(), state.manager.describe()
    data = []
    for m in state.cfg.models:
        loaded = state.manager.is_loaded(m.name)
        status = CLIENT_STATUS[ModelView.of(state, m.name, engines).health(state, now)]
        contexts = sorted({v.ctx_size for v in m.variants})
        for name in m.names:
            data.append({"id": name, "object": "model", "created": created, "owned_by": "lkn",
                         "loaded": loaded, "status": status,
                         "context_length": contexts[-1] if contexts else None,
                         "capabilities": capabilities(m),
                         "lkn": {"model": m.name, "alias_of": m.name if name != m.name else None,
                                 "engine": m.engine, "contexts": contexts,
                                 "embeddings": m.embeddings}})
    return {"object": "list", "data": data}


# ------------------------------------------------------------------ health and readiness

def health_payload(state: GatewayState) -> dict[str, Any]:
    """Liveness, cheap: no pids, ports or log tails (those are in /status)."""
    m = state.manager
    return {"status": "ok",
            "uptime_s": round(time.monotonic() - state.started, 1),
            "queued": m.queued(),
            "in_flight": m.in_flight(),
            "config": {"generation": m.generation,
                       "reloads": state.reloads,
                       "last_reload_failed": bool(state.last_reload_error)}}


def health_of_model(state: GatewayState, name: str) -> dict[str, Any]:
    view = ModelView.of(state, name)
    return {"model": name, "status": view.health(state, time.monotonic()),
            "engines": [{"engine": e["engine"], "ctx": e["ctx_size"], "state": e["state"],
                         "in_flight": e["in_flight"]} for e in view.engines]}


def ready_payload(state: GatewayState, life: Lifecycle) -> tuple[dict[str, Any], bool]:
    """The body of ``/ready`` and whether lkn is ready (every listener bound, not stopping)."""
    reason = ("shutting down" if life.stopping else
              None if life.listening else "listeners not bound yet")
    return ({"ready": reason is None, "reason": reason,
             "config_generation": state.manager.generation}, reason is None)


# ------------------------------------------------------------------ status

def status_payload(state: GatewayState, window_s: float | None = None) -> dict[str, Any]:
    m = state.manager
    now = time.monotonic()
    engines = m.describe()
    windows = DEFAULT_WINDOWS + ((window_s,) if window_s and window_s not in DEFAULT_WINDOWS
                                 else ())
    models = {model.name: _model_status(state, ModelView.of(state, model.name, engines), now,
                                        windows)
              for model in state.cfg.models}
    for model in state.cfg.models:
        if model.backends:  # balancing, and each backend's circuit breaker
            models[model.name]["balance"] = model.balance
            models[model.name]["backends"] = [
                {**b, "runtime": b["backend"] in state.runtime.get(model.name, {})}
                for b in m.backend_status(model)]
    running = [e for e in engines if e["state"] in ("starting", "ready", "stopping")]
    return {"uptime_s": round(now - state.started, 1),
            "config": {"path": state.cfg.path, "generation": m.generation,
                       "reloads": state.reloads, "last_reload_error": state.last_reload_error},
            "vram": {"budget_mb": state.cfg.server.vram_budget_mb,
                     "estimated_mb": sum(e["vram_mb"] for e in running)},
            "queued": m.queued(), "in_flight": m.in_flight(),
            "engines": engines, "models": models,
            "unload_candidates": m.unload_candidates(),
            "requests": state.inflight.describe(),
            "unexpected_errors": list(m.unexpected),
            "activity": activity_health(state),
            "cache": state.cache.describe() if state.cache else []}


def _model_status(state: GatewayState, view: ModelView, now: float,
                  windows: tuple[float, ...]) -> dict[str, Any]:
    """A model's row in ``/status``: its traffic, and what the dashboard shows beside it (the
    homeostat's settings: its histogram marks the threshold; the variants: load buttons;
    whether the engine can sleep)."""
    model = next(m for m in state.cfg.models if m.name == view.name)
    h = model.homeostasis
    last = state.traffic.last_used(view.name)
    return {"state": view.activity(state),
            "engines": [e["engine"] for e in view.engines],
            "last_used_s_ago": round(now - last, 1) if last is not None else None,
            "traffic": state.traffic.windows(view.name, now, windows),
            "homeostasis": {"mode": h.mode, "threshold": h.threshold,
                            "intervention": h.intervention},
            "variants": [v.ctx_size for v in model.variants],
            "can_sleep": view.can_sleep(),
            "pinned": model.pinned}


def live_metrics(state: GatewayState) -> dict[str, Any]:
    """What the metrics read at each scrape (gauges of the moment)."""
    m = state.manager
    return {"engines": m.describe(), "in_flight": m.in_flight(), "queued": m.queued(),
            "starts": m.starts, "start_failures": m.start_failures,
            "generation": m.generation,
            "cache": state.cache.describe() if state.cache else [],
            "cache_dropped": dict(state.cache.dropped) if state.cache else {},
            "activity": activity_health(state)}


def activity_health(state: GatewayState) -> dict[str, Any] | None:
    """The activity log's counters (None: the log is off)."""
    log = state.activity
    if log is None:
        return None
    return {"available": log.available, "pending": log.pending, "written": log.written,
            "dropped": log.dropped, "write_errors": log.write_errors}
