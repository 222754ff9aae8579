"""EngineClient: what lkn needs to know about one kind of engine.

An EngineClient is bound to one model variant. It builds the child's argv, knows the engine's
health semantics, rewrites requests for it, counts tokens through it, runs the entropy probe
through it and turns its error bodies into OpenAI-shaped ones. The process itself is owned by
``EngineProcess``; the client only speaks HTTP to a base URL it is given.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.child_env import engine_env
from lkn.engines.footprint import Footprint
from lkn.engines.limits import read_limited
from lkn.engines.probe_answer import ProbeAnswerError, ProbeResult, parse_openai
from lkn.engines.upstream import JSON_HEADERS, encode

RECONNECT_WINDOW_S = 0.5  # a pooled connection the engine closed fails at once, not later


class EngineRequestError(Exception):
    """The engine answered a helper call (tokenize, probe, ...) with an error."""


class EngineCrashed(Exception):
    """A call the engine must survive failed: a memory release or resume answered an error,
    timed out or dropped the connection. The engine's state is unknown (SGLang kills its
    whole tree when a release finds it busy), so its process tree must be stopped and the
    engine treated as crashed. Deliberately not an ``EngineRequestError``: no helper-call
    fallback may swallow it."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str = ""
    # The server on the port refused lkn's engine key (401/403): not the engine lkn started
    # (another process holds the port), whatever it says about its health.
    refused: bool = False


REFUSED = (401, 403)


def readiness(status: int, detail: str) -> Readiness:
    """A readiness answer from an HTTP status: 200 ready, 401/403 refused, else not yet."""
    return Readiness(status == 200, detail, refused=status in REFUSED)


ROUTES = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    # llama-server's own (lkn.request.extras)
    "rerank": "/v1/rerank",
    "infill": "/infill",
    "tokenize": "/tokenize",
    "detokenize": "/detokenize",
    "apply-template": "/apply-template",
    "props": "/props",
}


class EngineClient(ABC):
    """One kind of engine, bound to one model variant. The subclasses: ``LlamaCppEngine``
    (llamacpp), ``SGLangEngine`` (sglang), ``CommandEngine`` (any OpenAI-compatible server
    from an argv) and ``RemoteEngine`` (a server elsewhere). Each must say how it is started
    (``argv``), when it is ready (``check_ready``), how it counts tokens and how it probes;
    the rest has defaults for an OpenAI-compatible server."""

    kind: str = "engine"
    # Lines of the engine's own output that mean "ready now, check health": the health poll is
    # woken at once instead of after its next interval (see EngineProcess._poll_health).
    ready_markers: tuple[str, ...] = ()
    # Lines of its output at start that report the engine's memory footprint (see
    # ``footprint``); kept by EngineProcess while STARTING. Empty: the engine reports none.
    report_markers: tuple[str, ...] = ()

    # Whether a started engine of this kind takes lkn's per-start key (and refuses callers
    # without it); False: it is started without one and called without one.
    takes_engine_key = False
    # Whether the engine's chat template renders the request's tools (llama-server's
    # chat_template_caps, read once ready); None: not known.
    template_tools: bool | None = None

    def __init__(self, model: ModelConfig, variant: VariantConfig) -> None:
        self.model = model
        self.variant = variant
        self.effective_ctx: int = variant.ctx_size
        # The key of the current start (``new_engine_key``): only lkn may call the engine.
        self.engine_key: str | None = None

    @property
    def key(self) -> str:
        return self.model.variant_name(self.variant)

    # ---- process
    @abstractmethod
    def argv(self, port: int) -> list[str]:
        """The child's argv; never run through a shell."""

    def launch_argv(self, port: int) -> list[str]:
        """The argv of one start: ``argv`` plus flags that change no behaviour and are not part
        of the engine's identity (e.g. a log level for ``learn_footprint``)."""
        return self.argv(port)

    # Set by the manager while the engine's footprint is unknown: its next start reports it.
    learn_footprint = False

    def debug_start(self) -> bool:
        """Whether ``launch_argv`` raised the engine's log level (e.g. for ``learn_footprint``):
        debug output may carry prompts and answers, so once the engine is ready only the lines
        ``kept_after_ready`` passes are kept (see ``EngineProcess._drain``)."""
        return False

    # What the log says a debug-level start keeps after ready (see ``kept_after_ready``).
    debug_kept = "no output kept"

    def kept_after_ready(self, line: str) -> bool:
        """Whether a line a debug-level start prints after ready is kept: only one the engine
        would print at its normal level too. By default none (nothing tells them apart)."""
        return False

    def footprint(self, report: list[str]) -> Footprint | None:
        """The memory footprint the report lines of one start spell, if any."""
        return None

    def new_engine_key(self) -> None:
        """A fresh random key for the next start (called before ``launch_argv`` and ``env``);
        every call lkn makes to the engine carries it (``headers``). Hex: a key that began
        with "-" (as a urlsafe one may) would read as a flag on SGLang's command line."""
        self.engine_key = secrets.token_hex(32) if self.takes_engine_key else None

    def env(self, withheld: frozenset[str] = frozenset()) -> dict[str, str]:
        """The child's environment: allow-listed (see ``child_env``), never a name in
        ``withheld`` (the config's upstream keys), plus the model's ``env``."""
        return engine_env(os.environ, self.model.env, withheld=withheld)

    @abstractmethod
    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        """One readiness probe. Connection errors propagate (the engine is not listening yet)."""

    async def confirm_key(self, session: aiohttp.ClientSession, url: str,
                          health: Readiness) -> Readiness:
        """After a health check the engine answers without a key (llama-server's /health,
        SGLang's /ready): ready only if ``url``, which needs the key, takes this start's key;
        any other server on the port would pass the health check too."""
        if not health.ready or self.engine_key is None:
            return health
        async with session.get(url, headers=self.headers(), allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            await read_limited(resp)
            return Readiness(resp.status == 200, f"{health.detail}; key check HTTP "
                             f"{resp.status}", refused=resp.status in REFUSED)

    def health_settings(self) -> dict[str, Any]:
        """Settings that shape how the engine is watched; part of its identity on reload."""
        return {"health_timeout_s": self.model.health_timeout_s,
                "sleep_when_idle_s": self.model.sleep_when_idle_s}

    async def on_ready(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Called once after the engine became ready (e.g. to read the effective context)."""

    # ---- requests
    def upstream_path(self, route: str) -> str:
        return ROUTES[route]

    async def send(self, session: aiohttp.ClientSession, base_url: str, route: str,
                   payload: dict[str, Any], *,
                   timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """POST a request body (already prepared for this engine) to the engine's path for
        ``route``; the response is the caller's to read and close. EngineRequestError when the
        request cannot be made (a remote upstream's key vanished from the environment);
        aiohttp's errors and TimeoutError as they come."""
        extra = self.headers()
        headers = {**JSON_HEADERS, **extra} if extra else JSON_HEADERS
        url = base_url + self.upstream_path(route)
        data = encode(payload)
        sent = time.monotonic()
        try:
            resp = await session.post(url, data=data, headers=headers, timeout=timeout,
                                      allow_redirects=False)
        except aiohttp.ServerDisconnectedError:
            if time.monotonic() - sent > RECONNECT_WINDOW_S:
                raise  # the engine had the request and died on it: never run it twice
            # The engine closed a pooled keep-alive connection just as it was reused
            # (llama-server drops idle ones after ~5 s): it saw no request. Once more, on a
            # fresh connection.
            resp = await session.post(url, data=data, headers=headers, timeout=timeout,
                                      allow_redirects=False)
        if resp.status in REFUSED and self.engine_key is not None:
            # lkn's engine never refuses lkn: another server took the port (the engine died);
            # its answer is not relayed.
            resp.release()
            raise EngineRequestError(f"the server on {base_url} refused this start's engine "
                                     f"key: not the engine lkn started")
        return resp

    async def get(self, session: aiohttp.ClientSession, base_url: str, route: str, *,
                  timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """GET the engine's path for ``route`` (llama-server's ``/props``); the response is
        the caller's to read and close."""
        return await session.get(base_url + self.upstream_path(route), headers=self.headers(),
                                 timeout=timeout, allow_redirects=False)

    def prepare_body(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        out["model"] = self.served_model_name()
        return out

    def served_model_name(self) -> str:
        return self.model.name

    def headers(self) -> dict[str, str]:
        """Extra headers of every request to the engine: the key of its current start (a
        remote upstream: its own key). Every call to the engine takes them from here."""
        if self.engine_key is None:
            return {}
        return {"Authorization": f"Bearer {self.engine_key}"}

    @property
    def request_timeout_s(self) -> float | None:
        """A whole non-streaming answer may take this long; None: the server's
        request_timeout_s."""
        return None

    @property
    def openai_wire(self) -> bool:
        """Speaks OpenAI's wire format (lkn may add stream_options); False: translated
        (Anthropic)."""
        return True

    def translate_answer(self, raw: bytes) -> bytes:
        """A whole answer in OpenAI's shape (an engine with another API translates it)."""
        return raw

    def translate_stream(self, source: AsyncIterator[bytes],
                         body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The answer's event stream as OpenAI chunks (``body``: the client's request)."""
        return source

    @abstractmethod
    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        """Prompt tokens exactly as the engine sees them (chat template applied)."""

    @abstractmethod
    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        """Generate ``n_tokens`` with top-k logprobs and the request's own sampling settings."""

    # The engine answered a continuation with an error (a template that refuses an assistant
    # prefill, say): kept requests of this engine are generated again from then on.
    continuation_refused = False

    def repeats_prefill(self, route: str) -> bool:
        """Whether this engine's answer to a ``continuation`` starts with the probe's text
        again (then the relay strips it)."""
        return False

    def continuation(self, route: str, payload: dict[str, Any],
                     probe: ProbeResult) -> dict[str, Any] | None:
        """``payload`` (prepared for this engine) asking to continue the answer the probe began
        with its text, so the kept request does not generate it again; None where this engine
        cannot (then the request is sent as it is)."""
        return None

    async def opens_think(self, session: aiohttp.ClientSession, base_url: str,
                          body: dict[str, Any]) -> bool:
        """Whether the chat template's generation prompt opens a ``<think>`` block (the output
        then holds only ``</think>``). Unknown is False."""
        return False

    async def count_text_tokens(self, session: aiohttp.ClientSession, base_url: str,
                                text: str) -> int | None:
        """Tokens of a piece of output text (no BOS); None where the engine cannot say."""
        return None

    def normalize_error(self, status: int, raw: bytes) -> dict[str, Any]:
        """The engine's error body as ``{"error": {message, type, param, code, source}}``."""
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw.decode("utf-8", "replace").strip() or f"engine returned HTTP {status}"
        return {"error": _error_fields(data, status, self.kind)}

    def normalize_stream_data(self, data: str) -> str:
        """Rewrite one SSE ``data:`` payload; errors become a clean ``{"error": {...}}``."""
        if '"error"' not in data:
            return data
        try:
            obj = json.loads(data)
        except ValueError:
            return data
        if isinstance(obj, dict) and obj.get("error"):
            return json.dumps({"error": _error_fields(obj, 500, self.kind)})
        return data

    # ---- stopping
    # Seconds between SIGTERM and SIGKILL the engine needs to exit cleanly; None: the server's
    # stop_grace_s is enough.
    default_stop_grace_s: float | None = None

    def stop_grace_s(self, server_grace_s: float) -> float:
        """The grace to use when stopping this engine: the model's own ``stop_grace_s`` when
        set, else the server's, raised to what the engine needs (a SIGKILL mid-shutdown can
        leave GPU memory held)."""
        if self.model.stop_grace_s is not None:
            return self.model.stop_grace_s
        return max(server_grace_s, self.default_stop_grace_s or 0.0)

    # ---- optional capabilities
    supports_sleep = False

    async def engine_idle(self, session: aiohttp.ClientSession, base_url: str) -> bool:
        """Whether nothing is in flight at the engine itself (lkn's own count misses requests
        the engine still runs after lkn gave up on them). Only engines that sleep need it."""
        raise NotImplementedError

    async def release_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Give the GPU memory back without exiting. Raises ``EngineCrashed`` on failure."""
        raise NotImplementedError

    async def resume_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Take the GPU memory again. Raises ``EngineCrashed`` on failure."""
        raise NotImplementedError


def _error_fields(data: Any, status: int, source: str) -> dict[str, Any]:
    """Accepts the wrapped (``{"error": {...}}``), unwrapped (SGLang's ``{"object": "error",
    "message": ...}``) and string (``{"error": "Unauthorized"}``) shapes."""
    if isinstance(data, dict) and "error" in data:
        inner = data["error"]
        if isinstance(inner, str):
            inner = {"message": inner}
        elif not isinstance(inner, dict):
            inner = {"message": str(inner)}
    elif isinstance(data, dict):
        inner = data
    else:
        inner = {"message": str(data)}
    code = inner.get("code")
    return {
        "message": str(inner.get("message") or f"engine returned HTTP {status}"),
        "type": str(inner.get("type") or ("server_error" if status >= 500 else
                                          "invalid_request_error")),
        "param": inner.get("param"),
        "code": None if code is None else str(code),
        "source": source,
    }


PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)


async def openai_probe(session: aiohttp.ClientSession, url: str, payload: dict[str, Any],
                       route: str, top_k: int, n_tokens: int, *,
                       headers: dict[str, str] | None = None,
                       extra: dict[str, Any] | None = None) -> ProbeResult:
    """The entropy probe through an OpenAI-compatible endpoint: ``n_tokens`` with top-k
    logprobs and the request's own sampling settings."""
    payload = dict(payload)
    for key in ("stream", "stream_options", "n", "max_completion_tokens"):
        payload.pop(key, None)
    payload.update(max_tokens=n_tokens, logprobs=True, **(extra or {}))
    if route == "chat":
        payload["top_logprobs"] = top_k
    else:
        payload["logprobs"] = top_k  # integer logprobs on /v1/completions = n_probs
    async with session.post(url, json=payload, headers=headers, allow_redirects=False,
                            timeout=PROBE_TIMEOUT) as resp:
        data = await read_json(resp)
    try:
        return parse_openai(data, route)
    except ProbeAnswerError as exc:
        raise EngineRequestError(str(exc)) from None


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    raw = await read_limited(resp)
    if resp.status != 200:
        raise EngineRequestError(f"HTTP {resp.status}: {raw[:300].decode('utf-8', 'replace')}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise EngineRequestError(f"invalid JSON from engine: {exc}") from None
