"""The homeostat's gate, pure parts: ``decide`` (settings + reading -> verdict) and ``rewrite``
(the body a verdict sends), table-tested; ``probe`` against stub engines; and the request's
``Outcome`` as headers."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lkn.config import HomeostasisConfig
from lkn.engines.base import EngineRequestError, ProbeResult
from lkn.homeostat.gate import Reading, Verdict, decide, probe, rewrite
from lkn.request.outcome import Outcome

FAILED = Reading(None, 1, 0.01, "timed out")


def reading(score: float) -> Reading:
    return Reading(score, 1, 0.01)


@pytest.mark.parametrize("intervention, threshold, got, expected", [
    ("none", 0.5, FAILED, Verdict("PASSTHROUGH", None)),
    ("escalate", 0.5, FAILED, Verdict("PASSTHROUGH", None)),
    ("none", 0.5, reading(0.9), Verdict("ANALYTIC", None)),
    ("none", 0.5, reading(0.1), Verdict("FLUID", None)),
    ("verify_prompt", 0.5, reading(0.5), Verdict("ANALYTIC", "verify_prompt")),  # >= threshold
    ("verify_prompt", 0.5, reading(0.49), Verdict("FLUID", None)),
    ("reasoning", 0.0, reading(0.0), Verdict("ANALYTIC", "reasoning")),
    ("reasoning", 1.0, reading(0.99), Verdict("FLUID", None)),
    ("escalate", 0.6, reading(0.7), Verdict("ANALYTIC", "escalate")),
])
def test_decide(intervention: str, threshold: float, got: Reading, expected: Verdict) -> None:
    settings = HomeostasisConfig(mode="homeostatic", threshold=threshold,
                                 intervention=intervention)
    assert decide(settings, got) == expected


MSG = [{"role": "user", "content": "hi"}]
THINK_ON = {"reasoning_effort": "high",
            "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}
THINK_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
VERIFY = [{"role": "system", "content": "check"}, *MSG]


@pytest.mark.parametrize("route, intervention, verdict, extra", [
    ("chat", "reasoning", Verdict("PASSTHROUGH", None), {}),  # a failed probe: as sent
    ("chat", "reasoning", Verdict("ANALYTIC", "reasoning"), THINK_ON),
    ("chat", "reasoning", Verdict("FLUID", None), THINK_OFF),  # thinking only where asked
    ("completions", "reasoning", Verdict("ANALYTIC", "reasoning"), {}),
    ("completions", "reasoning", Verdict("FLUID", None), {}),
    ("chat", "verify_prompt", Verdict("ANALYTIC", "verify_prompt"), {"messages": VERIFY}),
    ("chat", "verify_prompt", Verdict("FLUID", None), {}),
    ("chat", "escalate", Verdict("ANALYTIC", "escalate"), {}),  # another model: same body
    ("chat", "none", Verdict("ANALYTIC", None), {}),
])
def test_rewrite(route: str, intervention: str, verdict: Verdict,
                 extra: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSG}
    settings = HomeostasisConfig(mode="homeostatic", intervention=intervention,
                                 verify_prompt="check")
    assert rewrite(route, body, settings, verdict) == {**body, **extra}
    assert body == {"model": "m", "messages": MSG}  # never written into


class _Client:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: int | None = None

    async def probe(self, session: Any, base_url: str, route: str, body: dict[str, Any],
                    top_k: int, n_tokens: int) -> ProbeResult:
        self.asked = n_tokens
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "slow":
            await asyncio.sleep(1)
        return self.answer  # type: ignore[no-any-return]


class _Lease:
    base_url = "http://engine"

    def __init__(self, client: _Client) -> None:
        self.client = client


@pytest.mark.parametrize("answer, score, failure", [
    (ProbeResult(((0.0,),)), 0.0, None),  # one candidate: certain
    (ProbeResult(((-0.6931, -0.6931),)), 1.0, None),  # a tie: as uncertain as it gets
    (ProbeResult(()), None, "the probe returned no usable logprobs"),
    (EngineRequestError("no logprobs here"), None, "no logprobs here"),
    (RuntimeError("boom"), None, "RuntimeError: boom"),
    ("slow", None, "timed out"),
])
def test_probe_returns_a_reading_and_never_raises(answer: Any, score: float | None,
                                                  failure: str | None) -> None:
    client = _Client(answer)
    settings = HomeostasisConfig(mode="homeostatic", probe_timeout_s=0.05, probe_tokens=4)
    got = asyncio.run(probe(None, _Lease(client), "chat",  # type: ignore[arg-type]
                            {"messages": MSG, "max_tokens": 2}, settings))
    assert (got.score if got.score is None else round(got.score, 3), got.failure) == (score,
                                                                                       failure)
    assert got.tokens == client.asked == 2  # never more than the client asked for


def test_outcome_headers_name_only_what_is_known() -> None:
    outcome = Outcome("r1")
    assert outcome.headers() == {"x-request-id": "r1"}
    outcome.cache, outcome.model, outcome.prompt_tokens, outcome.counted_by = (
        "miss", "m", 12, "engine")
    outcome.variant, outcome.mode, outcome.entropy = 4096, "ANALYTIC", 0.123456
    outcome.intervention, outcome.escalated_from = "escalate", "small"
    assert outcome.headers() == {
        "x-request-id": "r1", "x-lkn-cache": "miss", "x-lkn-model": "m",
        "x-lkn-prompt-tokens": "12;engine", "x-lkn-variant": "4096", "x-lkn-mode": "ANALYTIC",
        "x-lkn-entropy": "0.1235", "x-lkn-intervention": "escalate",
        "x-lkn-escalated-from": "small"}
    outcome.backend, outcome.fallback_from = "b1", "asked"
    outcome.forget_engine()  # another backend or model is tried: its facts are its own
    assert outcome.headers() == {
        "x-request-id": "r1", "x-lkn-cache": "miss", "x-lkn-model": "m",
        "x-lkn-prompt-tokens": "12;engine", "x-lkn-variant": "4096",
        "x-lkn-fallback-from": "asked"}
