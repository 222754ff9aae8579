"""The homeostat in front of a request's engine: probe (and, with a ``verifier``, have another
model judge the probe's answer), decide, then send the request as the verdict says: unchanged
(continuing from the probe's answer: ``Kept``), rewritten (an intervention), or to the model
``escalate_to`` names, on a lease of its own."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from lkn.config import HomeostasisConfig, ModelConfig
from lkn.fleet.records import Lease
from lkn.homeostat import gate
from lkn.request.keep import Kept
from lkn.request.lease import Backends, sized_body
from lkn.request.open_stream import OpenStream
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState
from lkn.request.tenancy import Tenancy
from lkn.request.verify import verify


@dataclass(frozen=True)
class Gated:
    """Past the homeostat's gate: the body to send, on which lease, of which model, and the
    probe's answer when the request keeps it."""
    body: dict[str, Any]
    lease: Lease
    model: ModelConfig
    kept: Kept | None = None


class Host(Protocol):
    """What the gate needs of the request it guards (``RequestHandler``)."""
    state: GatewayState
    outcome: Outcome
    tenancy: Tenancy
    stream: OpenStream

    def decline_cache(self) -> None: ...

    async def lease(self, model: ModelConfig, route: str, body: dict[str, Any],
                    backends: Backends, arrived: float | None = None,
                    facts: Outcome | None = None) -> Lease: ...


async def homeostat(host: Host, route: str, body: dict[str, Any], lease: Lease,
                    model: ModelConfig, settings: HomeostasisConfig,
                    backends: Backends) -> Gated:
    state, outcome = host.state, host.outcome
    window = None
    if settings.analytic_share is not None:  # the threshold that holds the share
        window = state.scores.of(model.name, settings.share_window)
        settings = replace(settings, threshold=window.threshold(settings.analytic_share,
                                                                settings.threshold))
    reading = await gate.probe(state.session, lease, route, body, settings)
    probed = lease  # the engine whose prompt cache holds the probe's answer
    judge: Lease | None = None
    # the verifier's lease learns its facts here; they become the request's if it answers
    judged = Outcome(outcome.request_id, client_key=outcome.client_key,
                     priority=outcome.priority, queued_at=outcome.queued_at)
    if settings.verifier is not None and reading.result is not None:
        if reading.result.text is None:  # nothing the verifier could read: no score at all
            reading = replace(reading, score=None, failure="the probe's answer is not plain "
                              "text for the verifier")
        else:
            async def take(target: ModelConfig) -> Lease:
                lease.release()  # the verifier may need this engine's place
                return await host.lease(target, route, body, backends, outcome.queued_at,
                                        judged)
            judge, reading = await verify(state, host.tenancy, route, body, settings, reading,
                                          take)
    verdict = gate.decide(settings, reading)
    if window is not None and reading.score is not None:
        window.observe(reading.score)
    gate.observe(state.metrics, model.name, settings, reading, verdict)
    outcome.mode, outcome.entropy = verdict.mode, reading.score
    outcome.intervention = verdict.intervention
    outcome.note_probe(reading.result, reading.verifier)
    sent = gate.rewrite(route, body, settings, verdict)
    if reading.score is None:
        host.decline_cache()  # not gated: a later request's probe may intervene
    target = None
    if verdict.intervention == "escalate":
        target = state.cfg.resolve(settings.escalate_to or "")  # the config in force
        if target is not None and target.name != model.name and not host.tenancy.allows(target):
            host.tenancy.skipped("escalation", target)
            target = None
    if target is None or target.name == model.name:
        if judge is not None:
            judge.release()
        if lease.released:  # it made way for the verifier: queued again, in its old place
            lease = await host.lease(model, route, sized_body(route, body, settings), backends,
                                     outcome.queued_at)
        # the request goes as the probe saw it: its answer continues from the probe's
        kept = Kept.of(route, body, reading.result, reading.tokens, probed) \
            if sent is body else None
        return Gated(sent, lease, model, kept)
    lease.release()
    outcome.escalated_from = model.name
    host.decline_cache()  # another model's answer
    state.metrics.escalations.inc(model.name, target.name)
    if host.stream.loading is not None:
        host.stream.loading.model = target  # progress names what it now waits for
    if judge is not None and judge.record.model.public == target.name and not judge.released:
        outcome.take_engine(judged)
        return Gated(sent, judge, target)  # its prompt cache holds the verification's prefix
    if judge is not None:
        judge.release()
    # Queued by the time the request first arrived: behind a busy strong model it is the
    # oldest, not the newest, request, so the wait bound (max_queue_wait_s) covers it.
    # host.lease names the model that answers in the outcome.
    return Gated(sent, await host.lease(target, route, sent, backends, outcome.queued_at),
                 target)
