"""What a request leaves behind when it ends, however it ended: its metrics, its line in the
activity log, its log line, the traffic statistics, and the ``request`` event (from its
``Outcome``, as its headers were)."""
from __future__ import annotations

import logging
import time

from aiohttp import web

from lkn.config.keys import KeyConfig
from lkn.errors import LknError
from lkn.ops.traffic import Finished
from lkn.request.inbound.base import Inbound
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState
from lkn.request.tenancy import record_activity

log = logging.getLogger("lkn.request.handler")


def finished(state: GatewayState, request: web.Request, inbound: Inbound, outcome: Outcome,
             key: KeyConfig | None, raw: bytes, label: str, status: int, elapsed: float,
             failure: LknError | None) -> None:
    metrics, route = state.metrics, inbound.route
    metrics.requests.inc(label, route, str(status), inbound.api, outcome.key_id)
    record_activity(state, request, api=inbound.api, route=route, model=label, status=status,
                    elapsed_s=elapsed, outcome=outcome, key=key, error=failure, body=raw)
    metrics.request_seconds.observe(elapsed, label, route, inbound.api)
    variant = "-" if outcome.variant is None else str(outcome.variant)
    log.info("%s %s model=%s status=%d variant=%s mode=%s %.0fms", request.method,
             request.path, label, status, variant, outcome.mode or "-", elapsed * 1000)
    if label == "unknown":
        return  # not a configured model: no statistics for arbitrary names
    state.traffic.record(label, Finished(time.monotonic(), elapsed, status < 400,
                                         outcome.completion_tokens))
    entropy = outcome.entropy_text  # the event carries the score as the header shows it
    state.bus.publish(
        "request", id=outcome.request_id, model=label, route=route, api=inbound.api,
        variant=outcome.variant,
        prompt_tokens=outcome.prompt_tokens, counted_by=outcome.counted_by or None,
        mode=outcome.mode, entropy=None if entropy is None else float(entropy),
        intervention=outcome.intervention, escalated_from=outcome.escalated_from,
        cache=outcome.cache, status=status, latency_ms=round(elapsed * 1000, 1),
        ttft_ms=None if outcome.ttft_s is None else round(outcome.ttft_s * 1000, 1),
        completion_tokens=outcome.completion_tokens, probe_kept=outcome.probe_kept or None)
