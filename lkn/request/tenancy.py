"""A request's client key and what its policy says (``server.keys``, README "Sharing the box"):
which models it may use, its rate and token quotas (``ops.quota.Ledger``), how many of its
requests run at once (``key_gate.KeyGate``: more wait in the key's own queue), and what the
durable activity log keeps of the request (``ops.activity``).

Everything here happens before an engine is touched (the model check, the quotas) or after the
answer (the charge, the activity row). A request without a key (a box without keys) has no
policy: it is recorded under the key id ''.
"""
from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator

from aiohttp import web

from lkn.config import KeyConfig, ModelConfig
from lkn.errors import Forbidden, LknError
from lkn.ops.activity import ActivityRow
from lkn.ops.quota import Limits, Ticket
from lkn.request.caller import Caller
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState

# The Open WebUI user a trusted key may name (``forward_user_headers``)
USER_HEADERS = ("X-OpenWebUI-User-Name", "X-OpenWebUI-User-Email", "X-OpenWebUI-User-Id")
MAX_USER = 200  # characters of a forwarded user kept
MAX_RESERVE = 8192  # tokens reserved up front at most (a base64 image is no prompt text)


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


def limits_of(key: KeyConfig) -> Limits:
    return Limits(requests_per_minute=key.requests_per_minute,
                  tokens_per_minute=key.tokens_per_minute, tokens_per_day=key.tokens_per_day)


def forwarded_user(request: web.Request, key: KeyConfig | None) -> str | None:
    """The Open WebUI user behind a shared key, as ``name <email> (id)``; only for a key that
    forwards them (``forward_user_headers``): any client could send the headers."""
    if key is None or not key.forward_user_headers:
        return None
    name, email, uid = (request.headers.get(h, "").strip() for h in USER_HEADERS)
    if not (name or email or uid):
        return None
    text = " ".join(p for p in (name, f"<{email}>" if email else "", f"({uid})" if uid else "")
                    if p)
    return text.encode("utf-8", "replace").decode("utf-8")[:MAX_USER]


class Tenancy:
    """One request's dealings with its key's policy (none: every method lets it through)."""

    def __init__(self, state: GatewayState, caller: Caller, outcome: Outcome) -> None:
        self.state = state
        self.key = caller.policy
        self.outcome = outcome
        self._ticket: Ticket | None = None
        outcome.key_id = caller.key_id

    def allows(self, model: ModelConfig) -> bool:
        return self.key is None or self.key.allows(model.public)

    def check_model(self, model: ModelConfig) -> None:
        """A model outside the key's list is a 403, aliases resolved (the config maps the
        key's names to the models' public names)."""
        if not self.allows(model):
            assert self.key is not None
            raise ModelNotAllowed(f"key '{self.key.id}' may not use model '{model.public}'",
                                  param="model")

    def skipped(self, what: str, model: ModelConfig) -> None:
        """A fallback or escalation the key may not use: skipped, and the answer says so."""
        note = f"{what} {model.public} (not allowed for this key)"
        earlier = self.outcome.extra_headers.get("x-lkn-skipped")
        self.outcome.extra_headers["x-lkn-skipped"] = f"{earlier}, {note}" if earlier else note

    def admit(self, body_bytes: int = 0) -> None:
        """The key's rates and token quotas: a 429 with Retry-After and x-ratelimit-* when
        one is spent (nothing is counted for a refused request). The body's bytes / 4 (at
        most ``MAX_RESERVE``) are reserved as its tokens until the engine's usage settles it:
        a burst of concurrent requests cannot all pass a token limit."""
        if self.key is None:
            return
        limits = limits_of(self.key)
        if not limits.any:
            return
        verdict = self.state.ledger.admit(self.key.id, limits, time.time(),
                                          reserve=min(body_bytes // 4, MAX_RESERVE))
        if not verdict.ok:
            raise verdict.error(self.key.id)
        self._ticket = verdict.ticket
        self.outcome.extra_headers.update(verdict.headers)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the key's ``max_concurrent`` places; beyond, the request waits its turn in
        the key's own queue, at most ``max_queue_wait_s`` (then a 504)."""
        if self.key is None:
            yield
            return
        async with self.state.key_gate.slot(self.key.id, self.key.max_concurrent,
                                            self.state.cfg.server.max_queue_wait_s):
            yield

    def settle(self) -> None:
        """Charge what the engine reported (prompt and completion tokens); a stream the client
        cut, whose usage never came, is charged the prompt lkn counted; a request no engine
        answered (refused, timed out, a cache hit) nothing."""
        if self._ticket is None:
            return
        o = self.outcome
        if o.completion_tokens is not None:
            actual: int | None = (o.usage_prompt_tokens or 0) + o.completion_tokens
        elif o.client_gone:
            actual = o.prompt_tokens
        else:
            actual = 0
        self.state.ledger.settle(self._ticket, actual, time.time())
        self._ticket = None


def record_activity(state: GatewayState, request: web.Request, *, api: str, route: str,
                    model: str, status: int, elapsed_s: float, outcome: Outcome,
                    key: KeyConfig | None, error: LknError | None = None,
                    body: bytes | None = None) -> None:
    """The request's row in the durable activity log (nothing when the log is off)."""
    log = state.activity
    if log is None:
        return
    settings = state.cfg.server.activity
    captured = None
    if body is not None and (settings.capture == "all"
                             or (settings.capture == "errors" and status >= 400)):
        captured = body[:settings.capture_kb * 1024].decode("utf-8", "replace")
    log.record(ActivityRow(
        ts=time.time(), request_id=outcome.request_id, key_id=outcome.key_id,
        user=forwarded_user(request, key), api=api, route=route, model=model,
        backend=outcome.backend, variant=outcome.variant, status=status,
        prompt_tokens=outcome.usage_prompt_tokens or 0,  # what the engine reported
        completion_tokens=outcome.completion_tokens or 0,
        reasoning_tokens=outcome.reasoning_tokens, latency_ms=round(elapsed_s * 1000, 1),
        ttft_ms=None if outcome.ttft_s is None else round(outcome.ttft_s * 1000, 1),
        mode=outcome.mode, intervention=outcome.intervention, cache=outcome.cache,
        error=None if error is None else error.message[:500], body=captured))
