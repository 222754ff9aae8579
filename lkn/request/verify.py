"""The verifier's judgement of the probe's answer (``homeostasis.verifier``): lease the verifier
model, ask it one token (``homeostat.verifier``), and make its probability of "no" the
reading's score. ``lease`` takes the verifier's lease (the gate releases the small model's
there: the verifier may need its place); the verifier's lease is returned, for the answer when the request escalates to the verifier
(whose prompt cache then holds the answer's prompt). A verifier that fails, or that the key may
not use, leaves no score: the request passes through, as after a failed probe."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

import aiohttp

from lkn.config import HomeostasisConfig, ModelConfig
from lkn.engines.base import EngineRequestError
from lkn.errors import LknError
from lkn.fleet.records import Lease
from lkn.homeostat.gate import Reading
from lkn.homeostat.verifier import no_probability, verification_body
from lkn.request.state import GatewayState
from lkn.request.tenancy import Tenancy

TOP_K = 20  # candidates of the verifier's one token: "yes" and "no" are among them


async def verify(state: GatewayState, tenancy: Tenancy, route: str, body: dict[str, Any],
                 settings: HomeostasisConfig, reading: Reading,
                 lease: Callable[[ModelConfig], Awaitable[Lease]]) -> tuple[Lease | None, Reading]:
    """The verifier's lease (None: none was taken) and the reading it makes."""
    assert reading.result is not None and reading.result.text is not None
    target = state.cfg.resolve(settings.verifier or "")
    if target is None:
        return None, replace(reading, score=None, failure=f"the verifier "
                             f"{settings.verifier} is no longer configured")
    if not tenancy.allows(target):
        tenancy.skipped("verifier", target)
        return None, replace(reading, score=None, failure="the key may not use the verifier")
    question = verification_body(route, body, reading.result.text, settings.verifier_question)
    if question is None:
        return None, replace(reading, score=None, failure="the verifier reads no token ids")
    started = time.monotonic()
    judge: Lease | None = None
    try:
        judge = await lease(target)
        question["model"] = target.name
        result = await asyncio.wait_for(
            judge.client.probe(state.session, judge.base_url, "chat", question, TOP_K, 1),
            settings.probe_timeout_s)
    except (LknError, EngineRequestError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        if judge is not None:
            judge.release()
        failure = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        return None, replace(reading, score=None, failure=f"the verifier {target.name} "
                             f"failed: {failure}")
    except BaseException:  # the client left, or the unexpected: the lease is not kept
        if judge is not None:
            judge.release()
        raise
    if not result.positions:
        judge.release()
        return None, replace(reading, score=None, failure=f"the verifier {target.name} gave "
                             f"no logprobs")
    score = no_probability(result.candidates[0] if result.candidates else (),
                           result.positions[0])
    return judge, replace(reading, score=score, verifier=result,
                          elapsed_s=reading.elapsed_s + time.monotonic() - started)
