"""What every request of one running gateway shares: the config in force, the engine manager,
the HTTP session to the engines, metrics, the cache and the operators' runtime backends."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from lkn.cache.store import ResponseCache
from lkn.config import Config
from lkn.fleet.manager import EngineManager
from lkn.homeostat.share import ScoreWindows
from lkn.ops.activity import ActivityLog
from lkn.ops.events import EventBus
from lkn.ops.inflight import InFlight
from lkn.ops.metrics import Metrics
from lkn.ops.quota import Ledger
from lkn.ops.traffic import TrafficStats
from lkn.request.inbound.response_store import ResponseStore
from lkn.request.key_gate import KeyGate


@dataclass
class GatewayState:
    cfg: Config
    manager: EngineManager
    session: aiohttp.ClientSession
    metrics: Metrics
    started: float
    last_reload_error: str | None = None
    reloads: int = 0
    cache: ResponseCache | None = None
    bus: EventBus = field(default_factory=EventBus)
    traffic: TrafficStats = field(default_factory=TrafficStats)
    inflight: InFlight = field(default_factory=InFlight)
    # Upstream backends registered through the admin API, as they were sent (model -> backend
    # name -> JSON): re-applied after every reload, gone at restart.
    runtime: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OpenAI Responses kept for previous_response_id (server.responses_store_*); None: none
    responses: ResponseStore | None = None
    # Each client key's quotas and concurrency (server.keys), and the durable activity log
    # (None: off, server.activity.enabled)
    ledger: Ledger = field(default_factory=Ledger)
    key_gate: KeyGate = field(default_factory=KeyGate)
    activity: ActivityLog | None = None
    # each model's recent probe scores, for a threshold that holds a share (analytic_share)
    scores: ScoreWindows = field(default_factory=ScoreWindows)


STATE = web.AppKey("lkn_state", GatewayState)
