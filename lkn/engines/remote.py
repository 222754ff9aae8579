"""A remote OpenAI-compatible server as one of lkn's engines: OpenAI itself, Ollama's ``/v1``,
vLLM or another lkn on another machine.

``RemoteEngine`` speaks to it (its paths under the configured ``/v1`` URL, its own model name,
the key read from the environment at each request — never from the config file, never into a
log or an error body). ``RemoteProcess`` stands where an engine process would: the manager
leases it like any engine, but there is nothing to spawn or kill and it holds no VRAM. Before
its first use (and after a failure) it checks the server answers ``health_path``.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import aiohttp

from lkn.config import ModelConfig, UpstreamConfig, VariantConfig
from lkn.config.upstreams import redact_url
from lkn.engines import anthropic
from lkn.engines.base import (ROUTES, EngineClient, EngineRequestError, ProbeResult, Readiness,
                              openai_probe)
from lkn.engines.handle import StateCallback
from lkn.engines.limits import read_limited
from lkn.engines.logs import LogRing
from lkn.engines.process import ILLEGAL_KEPT, EngineStartError
from lkn.engines.states import REMOTE_TRANSITIONS, State, is_legal
from lkn.errors import BadRequest
from lkn.sse import Event, SSEParser, frame

log = logging.getLogger("lkn.remote")
CHECK_TIMEOUT = aiohttp.ClientTimeout(total=10)


class MissingKey(EngineRequestError):
    pass


class RemoteEngine(EngineClient):
    kind = "upstream"

    def __init__(self, model: ModelConfig, variant: VariantConfig) -> None:
        super().__init__(model, variant)
        assert model.upstream is not None

    @property
    def upstream(self) -> UpstreamConfig:
        """Read from the model each time: a reload that keeps the engine may change it."""
        assert self.model.upstream is not None
        return self.model.upstream

    @property
    def request_timeout_s(self) -> float | None:
        return self.upstream.timeout_s

    def argv(self, port: int) -> list[str]:
        """No process: what identifies the server (a reload keeps it when this is unchanged)."""
        u = self.upstream
        return ["upstream", u.url, u.model or self.model.name, u.api_key_env or "",
                u.health_path]

    @property
    def anthropic(self) -> bool:
        return self.upstream.api == "anthropic"

    @property
    def openai_wire(self) -> bool:
        return not self.anthropic

    def headers(self) -> dict[str, str]:
        """The key, read now from the environment (a rotated key needs no reload)."""
        extra = {"anthropic-version": anthropic.VERSION} if self.anthropic else {}
        name = self.upstream.api_key_env
        if not name:
            return extra
        key = os.environ.get(name)
        if not key:
            raise MissingKey(f"the environment variable {name} (upstream.api_key_env of model "
                             f"'{self.model.name}') is not set")
        if self.anthropic:
            return {**extra, "x-api-key": key}
        return {"Authorization": f"Bearer {key}"}

    def prepare_body(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self.anthropic:
            return super().prepare_body(route, body)
        if route != "chat":
            raise BadRequest(f"model '{self.model.name}' is served by Anthropic's Messages "
                             f"API: only chat completions", param="model")
        return anthropic.to_messages_request(body, self.served_model_name(),
                                             self.model.default_max_tokens)

    def translate_answer(self, raw: bytes) -> bytes:
        if not self.anthropic:
            return raw
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        return json.dumps(anthropic.from_message(data, self.model.public)).encode()

    async def translate_stream(self, source: AsyncIterator[bytes],
                               body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Anthropic's events as OpenAI chunks (the relay calls this only off OpenAI's wire)."""
        options = body.get("stream_options")
        translator = anthropic.StreamTranslator(
            self.model.public,
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")))
        parser = SSEParser()
        async for chunk in source:
            out = b"".join(_frames(translator, parser.feed(chunk)))
            if out:
                yield out
        tail = b"".join(_frames(translator, parser.flush()))
        if tail:
            yield tail

    def scrub(self, text: str) -> str:
        """The text with the key and any URL's userinfo masked (an upstream, or aiohttp, may
        quote them in an error)."""
        name = self.upstream.api_key_env
        key = os.environ.get(name) if name else None
        return redact_url(text.replace(key, "***") if key else text)

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        if not self.upstream.health_path:
            return Readiness(True)
        async with session.get(base_url + self.upstream.health_path, headers=self.headers(),
                               allow_redirects=False, timeout=CHECK_TIMEOUT) as resp:
            body = await read_limited(resp)
        if resp.status == 200:
            return Readiness(True)
        return Readiness(False, f"HTTP {resp.status}: "
                                f"{self.scrub(body[:200].decode('utf-8', 'replace'))}")

    def upstream_path(self, route: str) -> str:
        if self.anthropic:
            return "/messages"
        return ROUTES[route].removeprefix("/v1")  # the configured URL carries the version

    def served_model_name(self) -> str:
        return self.upstream.model or self.model.name

    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        raise EngineRequestError("an OpenAI-compatible upstream has no tokenizer endpoint")

    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        if self.anthropic:  # no logprobs there: pass through without a wasted call
            raise EngineRequestError("Anthropic's Messages API gives no logprobs to probe")
        try:
            return await openai_probe(session, base_url + self.upstream_path(route),
                                      self.prepare_body(route, body), route, top_k, n_tokens,
                                      headers=self.headers())
        except EngineRequestError as exc:  # it may quote the upstream's error, key included
            raise EngineRequestError(self.scrub(str(exc))) from None

    def normalize_error(self, status: int, raw: bytes) -> dict[str, Any]:
        return super().normalize_error(status, self.scrub(raw.decode("utf-8", "replace"))
                                       .encode())

    def normalize_stream_data(self, data: str) -> str:
        return super().normalize_stream_data(self.scrub(data) if '"error"' in data else data)


def _frames(translator: anthropic.StreamTranslator, events: Iterable[Event]) -> Iterator[bytes]:
    for event in events:
        if not event.data:
            continue
        try:
            decoded = json.loads(event.data)
        except ValueError:
            continue
        for out in translator.feed(decoded):
            yield frame(out) if isinstance(out, str) else frame(json.dumps(out))


class RemoteProcess:
    """The manager's view of a remote server: READY once it answered its health path. An
    ``EngineHandle`` like ``EngineProcess``; its moves are ``states.REMOTE_TRANSITIONS``."""

    pid = None
    port = None

    def __init__(self, client: RemoteEngine, *, session: aiohttp.ClientSession,
                 on_change: StateCallback, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.client = client
        self.key = client.key
        self._session = session
        self._on_change = on_change
        self._clock = clock
        self.logs = LogRing(self.key)
        self.state = State.STOPPED
        self.last_error = ""
        self.ready_seconds: float | None = None
        self.start_timeout_s = 0.0
        self.stop_grace_s = 0.0
        self.start_report: list[str] = []  # a remote server reports no memory footprint
        # (from, to) of every move outside REMOTE_TRANSITIONS: a bug in lkn (see states)
        self.illegal_transitions: collections.deque[tuple[State, State]] = \
            collections.deque(maxlen=ILLEGAL_KEPT)

    @property
    def base_url(self) -> str:
        return self.client.upstream.url

    @property
    def shown_url(self) -> str:
        """Its URL for errors, logs and /status: without userinfo."""
        return redact_url(self.base_url)

    def _set(self, state: State, note: str) -> None:
        # The same state again is no move: two callers of ensure_ready each run a check.
        if state is not self.state and not is_legal(self.state, state, REMOTE_TRANSITIONS):
            log.error("upstream %s: illegal state transition %s -> %s (a bug in lkn; the new "
                      "state stands)", self.key, self.state.value, state.value)
            self.illegal_transitions.append((self.state, state))
        old, self.state = self.state, state
        self.logs.mark(f"{old.value} -> {state.value} {note}".rstrip())
        self._on_change(self, old)

    async def ensure_ready(self) -> None:
        if self.state is State.READY:
            return
        self._set(State.STARTING, "")
        started = self._clock()
        try:
            readiness = await self.client.check_ready(self._session, self.base_url)
            detail = readiness.detail
        except (aiohttp.ClientError, OSError, TimeoutError, EngineRequestError) as exc:
            readiness, detail = Readiness(False), str(exc) or exc.__class__.__name__
        if not readiness.ready:
            self.last_error = (f"upstream {self.shown_url} of model '{self.client.model.name}' "
                               f"is not answering: {self.client.scrub(detail)}")
            self._set(State.FAILED, "")
            raise EngineStartError(self.last_error)
        self.ready_seconds = self._clock() - started
        self.last_error = ""
        self._set(State.READY, f"{self.shown_url}, {self.ready_seconds:.2f}s")

    async def confirm_alive(self) -> bool:
        # A server elsewhere: lkn cannot see its process; its breaker and health checks judge.
        return self.state is not State.FAILED

    async def stop(self) -> None:
        if self.state is not State.STOPPED:
            self._set(State.STOPPED, "")

    async def sleep(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "state": self.state.value, "pid": None, "port": None,
                "ctx_size": self.client.effective_ctx, "last_error": self.last_error or None,
                "start_seconds": (None if self.ready_seconds is None
                                  else round(self.ready_seconds, 3)),
                "log": None, "upstream": self.shown_url}
