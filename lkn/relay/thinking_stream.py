"""ThinkingRelay: the I/O half of ``thinking`` for one request.

It asks the engine whether the chat template opens ``<think>`` (so the parser starts inside the
block) and counts the reasoning tokens through the engine's tokenizer for
``usage.completion_tokens_details.reasoning_tokens``. Where lkn does not split (``engine`` or
``none`` mode, ``separate_thinking: false``, non-chat routes) answers pass through untouched.
An engine helper that fails never fails the answer: the split goes on without the count, or
with the template taken as not opening a block.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator

import aiohttp

from lkn.engines.base import EngineRequestError
from lkn.sse import DONE, SSEParser, frame
from lkn.relay.thinking import (LKN_FIELDS, StreamShaper, constrained, engine_body,
                                set_channel_tokens, set_reasoning_tokens, split_message)

if TYPE_CHECKING:
    from lkn.fleet.records import Lease

log = logging.getLogger("lkn.relay.thinking")
HELPER_ERRORS = (EngineRequestError, aiohttp.ClientError, asyncio.TimeoutError, KeyError,
                 ValueError, TypeError)


class ThinkingRelay:
    def __init__(self, route: str, body: dict[str, Any], lease: Lease,
                 session: aiohttp.ClientSession) -> None:
        self._route = route
        self._client = lease.client
        self._base_url = lease.base_url
        self._session = session
        self._body = body
        self._mode = self._client.model.reasoning
        self._channels = tuple(body.get("include_channels") or ())
        self.splits = (route == "chat" and self._mode == "lkn"
                       and body.get("separate_thinking") is not False
                       and not (self._client.kind == "llamacpp" and constrained(body)))

    def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._route != "chat":
            return {k: v for k, v in payload.items() if k not in LKN_FIELDS}
        return engine_body(payload, engine=self._client.kind, mode=self._mode)

    async def response(self, raw: bytes) -> bytes:
        if not self.splits:
            return raw
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return raw
        opened = await self._opens_think()
        messages = [c["message"] for c in data["choices"]
                    if isinstance(c, dict) and isinstance(c.get("message"), dict)]
        reasoning = [split_message(m, think_opened=opened, channels=self._channels)
                     for m in messages]
        channels: dict[str, str] = {}
        for m in messages:
            for name, text in (m.get("channels") or {}).items():
                channels[name] = channels.get(name, "") + text
        await self._count_into(data, reasoning, channels)
        return json.dumps(data, ensure_ascii=False).encode("utf-8")

    async def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Re-frames the upstream's SSE bytes; upstream errors propagate unchanged. Only for a
        relay that ``splits``: one that does not leaves the bytes alone, so its caller passes them
        on without this generator layer."""
        shaper = StreamShaper(think_opened=await self._opens_think(), channels=self._channels)
        parser = SSEParser()
        async for chunk in chunks:
            out = b"".join([await self._event(e.data, shaper) for e in parser.feed(chunk)])
            if out:
                yield out
        out = b"".join([await self._event(e.data, shaper) for e in parser.flush()])
        # EOF without [DONE]: send what the parser held; the forwarder reports the cut.
        out += b"".join(frame(d) for d in shaper.finish())
        if out:
            yield out

    async def _event(self, data: str | None, shaper: StreamShaper) -> bytes:
        if data is None:
            return b":\n\n"  # a keep-alive comment
        if data == DONE:
            return b"".join(frame(d) for d in shaper.finish()) + frame(DONE)
        out = []
        for payload in shaper.feed(data):
            if '"usage"' in payload:
                payload = await self._with_count(payload, shaper)
            out.append(frame(payload))
        return b"".join(out)

    async def _with_count(self, payload: str, shaper: StreamShaper) -> str:
        try:
            data = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
            return payload
        await self._count_into(data, ["".join(shaper.reasoning)], shaper.channel_texts)
        return json.dumps(data, ensure_ascii=False)

    async def _count_into(self, data: dict[str, Any], reasoning: list[str],
                          channels: dict[str, str]) -> None:
        usage = data.get("usage")
        if not isinstance(usage, dict):
            return
        total = await self._count(reasoning)
        if total is not None:
            set_reasoning_tokens(usage, total)
        counted = {name: await self._count([text]) for name, text in channels.items()}
        per_channel = {name: n for name, n in counted.items() if n is not None}
        if per_channel and len(per_channel) == len(counted):  # one uncounted: none reported
            set_channel_tokens(usage, per_channel)

    async def _count(self, texts: list[str]) -> int | None:
        total = 0
        for text in texts:
            if not text:
                continue
            try:
                n = await self._client.count_text_tokens(self._session, self._base_url, text)
            except HELPER_ERRORS as exc:
                log.warning("counting output tokens failed: %s", exc)
                return None
            if n is None:
                return None
            total += n
        return total

    async def _opens_think(self) -> bool:
        try:
            return await self._client.opens_think(self._session, self._base_url,
                                                  engine_body(self._body,
                                                              engine=self._client.kind,
                                                              mode=self._mode))
        except HELPER_ERRORS as exc:
            log.warning("could not render the chat template of %s: %s", self._client.key, exc)
            return False
