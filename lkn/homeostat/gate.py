"""The homeostat's gate in front of an engine: ``probe`` asks the leased engine for a few tokens'
logprobs and returns a ``Reading`` (the score, or why there is none); ``decide`` turns the model's
settings and the reading into a ``Verdict`` (FLUID, ANALYTIC or PASSTHROUGH, and the intervention
to apply); ``rewrite`` is the request body the verdict sends. Escalation (another model answers)
is the handler's: it needs a new lease."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from lkn.config import HomeostasisConfig
from lkn.engines.base import EngineRequestError
from lkn.engines.probe_answer import ProbeResult
from lkn.fleet.records import Lease
from lkn.fleet.selector import explicit_answer_budget
from lkn.homeostat import probe as probe_math
from lkn.homeostat.interventions import with_reasoning, with_verify_prompt, without_reasoning
from lkn.homeostat.probe import ANALYTIC, PASSTHROUGH
from lkn.ops.metrics import Metrics

log = logging.getLogger("lkn.homeostat.gate")


@dataclass(frozen=True)
class Reading:
    """One probe: the aggregated uncertainty in [0, 1], or ``failure`` (then ``score`` is None),
    and what the probe generated (``result``: its answer, which a kept request continues)."""
    score: float | None
    tokens: int            # the positions asked for
    elapsed_s: float
    failure: str | None = None
    result: ProbeResult | None = None
    verifier: ProbeResult | None = None  # the verifier's one token, when one judged


@dataclass(frozen=True)
class Verdict:
    mode: str                   # FLUID, ANALYTIC or PASSTHROUGH (the probe failed)
    intervention: str | None    # what an ANALYTIC request gets; None: nothing


async def probe(session: aiohttp.ClientSession, lease: Lease, route: str, body: dict[str, Any],
                settings: HomeostasisConfig) -> Reading:
    """Probe ``body`` on the leased engine. Never raises for a failed probe: a request whose
    probe fails passes through, it is not refused."""
    # never score more of the answer than the client asked for
    n_tokens = min(settings.probe_tokens, explicit_answer_budget(body) or settings.probe_tokens)
    started = time.monotonic()
    result: ProbeResult | None = None
    try:
        result = await asyncio.wait_for(
            lease.client.probe(session, lease.base_url, route, body, settings.top_k, n_tokens),
            settings.probe_timeout_s)
        score = probe_math.aggregate(
            [probe_math.token_uncertainty(p, settings.probe_score)
             for p in result.positions] or [None],
            settings.probe_aggregate, result.tokens)
        failure = None if score is not None else "the probe returned no usable logprobs"
    except Exception as exc:  # noqa: BLE001 - any failed probe passes the request through
        score = None
        failure = ("timed out" if isinstance(exc, asyncio.TimeoutError) else
                   str(exc) if isinstance(exc, (EngineRequestError, aiohttp.ClientError))
                   else f"{exc.__class__.__name__}: {exc}")
    return Reading(score, n_tokens, time.monotonic() - started, failure,
                   result if score is not None else None)


def decide(settings: HomeostasisConfig, reading: Reading) -> Verdict:
    if reading.score is None:
        return Verdict(PASSTHROUGH, None)
    mode = probe_math.classify(reading.score, settings.threshold)
    if mode != ANALYTIC or settings.intervention == "none":
        return Verdict(mode, None)
    return Verdict(mode, settings.intervention)


def rewrite(route: str, body: dict[str, Any], settings: HomeostasisConfig,
            verdict: Verdict) -> dict[str, Any]:
    """The body the verdict sends (a copy when it changes; escalation sends it unchanged)."""
    if verdict.mode == PASSTHROUGH:
        return body  # the probe failed: the request goes as the client sent it
    if verdict.intervention == "verify_prompt":
        return with_verify_prompt(route, body, settings.verify_prompt)
    if route != "chat" or settings.intervention != "reasoning":
        return body
    # thinking only where the probe asks for it
    if verdict.intervention == "reasoning":
        return with_reasoning(body, settings.reasoning_effort)
    return without_reasoning(body)


def observe(metrics: Metrics, model: str, settings: HomeostasisConfig, reading: Reading,
            verdict: Verdict) -> None:
    """The probe's metrics and log line."""
    metrics.probes.inc(model, verdict.mode)
    if reading.score is None:
        log.warning("probe failed for model=%s (%s); passing the request through", model,
                    reading.failure)
        return
    metrics.probe_entropy.observe(reading.score, model)
    metrics.probe_seconds.observe(reading.elapsed_s, model)
    if reading.result is not None:
        metrics.probe_tokens.inc(model, "decode", amount=reading.result.decoded)
        if reading.result.prefilled:
            metrics.probe_tokens.inc(model, "prefill", amount=reading.result.prefilled)
    if reading.verifier is not None and settings.verifier is not None:
        metrics.probe_tokens.inc(settings.verifier, "verify", amount=reading.verifier.decoded)
        if reading.verifier.prefilled:
            metrics.probe_tokens.inc(settings.verifier, "verify_prefill",
                                     amount=reading.verifier.prefilled)
    log.info("probe model=%s entropy=%.4f threshold=%.2f mode=%s probe_ms=%.1f", model,
             reading.score, settings.threshold, verdict.mode, reading.elapsed_s * 1000)
    if verdict.intervention is not None:
        metrics.interventions.inc(model, verdict.intervention)
