"""The response cache at the HTTP edge: one request's ``CacheTicket``.

``CacheTicket.open`` decides hit, miss or bypass (``Cache-Control: no-cache`` / ``no-store`` or
``"lkn": {"cache": false}`` bypass: no lookup and no store) and counts it; the ticket's
``lookup.result`` is the ``x-lkn-cache`` header.
A hit is answered here, without an engine: the stored JSON as it was sent, or replayed as an
OpenAI stream. A miss ``tee``s the relayed stream into an accumulator and ``settle``s the
response: a 200 JSON answer, or a stream that ended with ``[DONE]`` and no error, is stored.

Lookups are partitioned by the caller's key (``store.partition_of``). A hit goes out with a fresh
``id`` and ``created`` (every replayed chunk too): an answer is never handed out under the id of
the request that first got it. A miss whose answer is not what a plain run of the request gives
(its probe failed, so it was not gated; it escalated to another model) is ``decline``d: not
stored.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator, Mapping

from aiohttp import web

from lkn import fastjson
from lkn.cache.store import BYPASS, HIT, MISS, Lookup, ResponseCache, partition_of
from lkn.cache.stream import StreamAccumulator, replay
from lkn.config import HomeostasisConfig, ModelConfig
from lkn.errors import BadRequest
from lkn.ops.metrics import Metrics
from lkn.sse import sse_headers

CACHE_HEADER = "x-lkn-cache"
__all__ = ["BYPASS", "CACHE_HEADER", "CacheTicket", "HIT", "MISS", "cache_opt_out",
           "fresh_identity", "partition_of"]


def cache_opt_out(lkn_field: Any) -> tuple[Any, bool]:
    """Takes ``cache`` out of the request's ``"lkn"`` field: (the rest, whether it said false)."""
    if not isinstance(lkn_field, Mapping) or "cache" not in lkn_field:
        return lkn_field, False
    rest = {k: v for k, v in lkn_field.items() if k != "cache"}
    if not isinstance(lkn_field["cache"], bool):
        raise BadRequest(f"lkn cache must be true or false, got {lkn_field['cache']!r}",
                         param="lkn.cache")
    return rest, not lkn_field["cache"]


def fresh_identity(answer: dict[str, Any]) -> dict[str, Any]:
    """A stored answer under a new ``id`` and ``created``, as if generated now."""
    prefix = "cmpl" if answer.get("object") == "text_completion" else "chatcmpl"
    return {**answer, "id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time())}


def _no_cache(headers: Mapping[str, str]) -> bool:
    directives = {d.strip().split("=")[0].lower()
                  for d in headers.get("Cache-Control", "").split(",")}
    return bool(directives & {"no-cache", "no-store"})


class CacheTicket:
    def __init__(self, cache: ResponseCache, lookup: Lookup, stream: bool,
                 include_usage: bool) -> None:
        self._cache = cache
        self.lookup = lookup
        self._stream = stream
        self._include_usage = include_usage
        self._accumulator: StreamAccumulator | None = None
        self._relayed_to_end = False
        self._stored = False
        self._declined = False

    @classmethod
    def open(cls, cache: ResponseCache, metrics: Metrics, request: web.Request, route: str,
             model: ModelConfig, body: dict[str, Any], settings: HomeostasisConfig,
             opted_out: bool, partition: str) -> CacheTicket | None:
        stream = bool(body.get("stream"))
        options = body.get("stream_options")
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        lookup = cache.lookup(route, model, body, settings,
                              bypass=opted_out or _no_cache(request.headers),
                              needs_usage=include_usage or not stream, partition=partition)
        if lookup is None:
            return None
        metrics.cache_requests.inc(model.name, lookup.result)
        return cls(cache, lookup, stream, include_usage)

    @property
    def hit(self) -> bool:
        return self.lookup.result == HIT

    def answer(self, headers: dict[str, str], now: float) -> web.Response:
        """Answer a hit from the cache."""
        entry = self.lookup.entry
        assert entry is not None
        headers = {**headers, "x-lkn-model": self.lookup.model,
                   "Age": str(max(0, int(now - entry.stored_at)))}
        answer = fresh_identity(fastjson.loads(entry.answer))
        if not self._stream:
            return web.Response(body=fastjson.dumps(answer), content_type="application/json",
                                headers=headers)
        # The whole stream is known: one body with a length, no chunked transfer.
        return web.Response(body=b"".join(replay(answer, include_usage=self._include_usage)),
                            headers=sse_headers(headers))

    def decline(self) -> None:
        """This request's answer is not one to keep (see the module's docstring)."""
        self._declined = True

    async def tee(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass a miss's relayed stream through, assembling the answer it spells."""
        if self.lookup.result != MISS:
            async for chunk in chunks:
                yield chunk
            return
        self._accumulator = StreamAccumulator()
        async for chunk in chunks:
            self._accumulator.feed(chunk)
            if self._accumulator.done and not self._relayed_to_end:
                # Stored before the client sees [DONE]: a client that asks again at once is
                # answered from the cache, not by a race with this request's last steps.
                self._relayed_to_end = True
                self._store_stream()
            yield chunk
        self._relayed_to_end = True

    def settle(self, response: web.StreamResponse) -> None:
        """Store a miss's answer if it is a complete success."""
        if self.lookup.result != MISS or response.status != 200 or self._declined:
            return
        if isinstance(response, web.Response):
            raw = response.body
            if not isinstance(raw, bytes) or response.content_type != "application/json":
                return
            try:
                answer = json.loads(raw)
            except ValueError:
                return
            if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
                return
            self._cache.store(self.lookup, raw, has_usage=answer.get("usage") is not None)
            return
        if not self._stored:
            self._store_stream()

    def _store_stream(self) -> None:
        acc = self._accumulator
        if acc is None or not self._relayed_to_end or self._stored or self._declined:
            return
        self._stored = True
        acc.finish()
        assembled = acc.answer()
        if assembled is None:
            return
        raw = json.dumps(assembled, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._cache.store(self.lookup, raw, has_usage="usage" in assembled)
