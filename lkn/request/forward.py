"""Forwarding one request to its leased engine and relaying the answer: a whole JSON answer, or a
stream event by event (split thinking, the response cache's tee, usage read on the way). The
engine's usage feeds the metrics and the request's ``Outcome`` (tokens/s, time to first event).

The response's ``x-lkn-*`` headers are not set here: a stream takes them from the ``Outcome``
when its headers go out, any other response when the handler returns it.

What comes from the engine is bounded (``MAX_UPSTREAM_BODY`` for a whole answer, ``lkn.sse``'s
``MAX_UPSTREAM_LINE`` for an event): beyond, a 502, or mid-stream lkn's error event. What goes
to the client has a deadline per write (``server.stream_idle_timeout_s``, ``write_deadline``):
a client that stops reading is dropped and the lease released, like a client that left."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from lkn.cache.http import CacheTicket
from lkn.config import ServerConfig
from lkn.config.upstreams import redact_url
from lkn.engines.base import EngineRequestError
from lkn.engines.limits import UpstreamTooLarge, read_limited
from lkn.engines.upstream import upstream_timeout, with_usage
from lkn.errors import (ERROR_SOURCE_HEADER, EngineUnavailable, EngineUnreachable, GatewayTimeout,
                        UpstreamError)
from lkn.fleet.records import Lease
from lkn.ops.usage import Usage, answer_usage, read_usage
from lkn.relay.client_write import BoundedResponse, WriteDeadline
from lkn.relay.continued import Continued
from lkn.relay.forced_tools import ForcedToolCall
from lkn.relay.stream import StreamRelay
from lkn.relay.thinking_stream import ThinkingRelay
from lkn.request.keep import Kept
from lkn.request.open_stream import OpenStream
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState
from lkn.request.validate_formats import check_media_urls
from lkn.sse import EventTooLarge, frame_json

log = logging.getLogger("lkn.request.forward")

# What an engine answers a continuation it will not make (a template that refuses an assistant
# prefill); any other error is the engine's answer, as for any request.
REFUSED_CONTINUATION = (400, 422)
REFUSAL_WORDS = ("prefill", "enable_thinking", "continue_final_message", "assistant message")


def write_deadline(state: GatewayState, server: ServerConfig, outcome: Outcome) -> WriteDeadline:
    """The deadline of each write to this request's client; a stall counts for its model."""
    return WriteDeadline(server.stream_idle_timeout_s, outcome.request_id,
                         lambda: state.metrics.client_stalls.inc(outcome.model or "unknown"))


class Forwarder:
    def __init__(self, state: GatewayState, server: ServerConfig, outcome: Outcome,
                 stream: OpenStream, cache: CacheTicket | None = None) -> None:
        self.state = state
        self.server = server  # the settings of the request's config generation
        self.outcome = outcome
        self.stream = stream
        self.cache = cache  # the ticket whose miss the relayed stream fills
        self.broken = False  # the relayed stream broke off (it ended with an error event)

    async def forward(self, route: str, body: dict[str, Any], lease: Lease,
                      started: float, kept: Kept | None = None) -> web.StreamResponse:
        """The engine's answer: a JSON response, the engine's error answer (status >= 400,
        not prepared: a fallback may still answer instead), or the relayed stream. ``kept``:
        the homeostat's probe wrote the answer's start, which the engine continues (or the
        whole answer: then the engine is not asked again)."""
        s = self.server
        client = lease.client
        stream = bool(body.get("stream")) and route != "embeddings"
        check_media_urls(body, client.kind)  # per engine: a backend or fallback may be local
        thinking = ThinkingRelay(route, body, lease, self.state.session)
        payload = thinking.prepare(client.prepare_body(route, body))
        forced = ForcedToolCall.of(route, body, client)
        if forced is not None:
            payload = forced.prepare(payload)
        # usage feeds the metrics (an engine with another wire format reports it its own way);
        # asked for on a copy: with_usage writes into what it is given
        strip_usage = False
        if stream and client.openai_wire:
            payload = dict(payload)
            strip_usage = with_usage(payload)
        original = payload  # what is sent when the probe's answer is not continued
        plan = None if kept is None else kept.plan(lease, payload,
                                                   client.prepare_body(route, body))
        continued: Continued | None = None
        if plan is not None:
            continued, continuing = plan
            self.outcome.probe_kept = continued.probe.decoded
            if continuing is None:  # the probe wrote all of the answer
                return await self._probe_only(continued, lease, started, thinking, stream,
                                              strip_usage)
            payload = continuing
        whole = client.request_timeout_s or s.request_timeout_s
        timeout = upstream_timeout(stream, whole, s.stream_idle_timeout_s)
        sent = time.monotonic()
        upstream = await self._send(lease, route, payload, timeout)
        if continued is not None and upstream.status in REFUSED_CONTINUATION:
            # The engine will not continue (a template that refuses an assistant prefill):
            # the request is generated again, as it came, and so are this engine's next ones.
            async with upstream:
                try:
                    detail = (await read_limited(upstream))[:200].decode("utf-8", "replace")
                except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamTooLarge) as exc:
                    detail = str(exc)
            # Only a refusal of the continuation itself is for good (this request's prompt plus
            # the probe's tokens may just not fit); either way this one is sent as it came.
            lasting = any(word in detail.lower() for word in REFUSAL_WORDS)
            log.warning("engine %s refused to continue a probe's answer (HTTP %d: %s); %s",
                        lease.process.key, upstream.status, detail,
                        "kept requests are generated again" if lasting
                        else "this request is generated again")
            client.continuation_refused = client.continuation_refused or lasting
            continued, self.outcome.probe_kept = None, 0
            upstream = await self._send(lease, route, original, timeout)
        async with upstream:
            if 300 <= upstream.status < 400:  # never followed: it could point anywhere
                raise UpstreamError(f"engine {lease.process.key} answered with a redirect "
                                    f"(HTTP {upstream.status}), which lkn does not follow")
            if not stream or upstream.status >= 400 \
                    or "text/event-stream" not in upstream.headers.get("Content-Type", ""):
                try:
                    raw = await read_limited(upstream)
                except asyncio.TimeoutError:
                    raise GatewayTimeout(f"engine {lease.process.key} did not finish within "
                                         f"{whole:g}s") from None
                except UpstreamTooLarge as exc:
                    raise UpstreamError(f"engine {lease.process.key} sent too much: "
                                        f"{exc}") from None
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"engine {lease.process.key} broke off its answer: "
                                        f"{redact_url(str(exc))}") from None
                deadline = write_deadline(self.state, s, self.outcome)
                if upstream.status >= 400:
                    return BoundedResponse(
                        deadline=deadline, status=upstream.status,
                        text=json.dumps(client.normalize_error(upstream.status, raw)),
                        content_type="application/json",
                        headers={ERROR_SOURCE_HEADER: "engine"})
                raw = client.translate_answer(raw)
                if forced is not None:
                    raw = forced.answer(raw)
                if continued is not None:
                    raw = continued.stitch(raw)
                    if continued.anew:  # it answered anew: this one is asked again
                        self._not_continued(lease)
                        return await self.forward(route, body, lease, started)
                self._usage(answer_usage(raw, time.monotonic() - sent))
                return BoundedResponse(deadline=deadline, body=await thinking.response(raw),
                                       status=upstream.status, content_type="application/json")
            return await self.relay_stream(upstream, lease, started, thinking,
                                           strip_usage=strip_usage, body=body, forced=forced,
                                           continued=continued)

    def _not_continued(self, lease: Lease) -> None:
        """The engine did not continue the probe's answer (it began its own, a build or a
        flag without assistant prefill): its kept requests are generated again."""
        log.warning("engine %s did not continue a probe's answer; kept requests are "
                    "generated again", lease.process.key)
        lease.client.continuation_refused = True
        self.outcome.probe_kept = 0

    async def _send(self, lease: Lease, route: str, payload: dict[str, Any],
                    timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        try:
            return await lease.client.send(self.state.session, lease.base_url, route, payload,
                                           timeout=timeout)
        except EngineRequestError as exc:  # a remote upstream's key vanished from the env
            raise EngineUnavailable(str(exc)) from None
        except asyncio.TimeoutError:
            raise GatewayTimeout(f"engine {lease.process.key} did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise EngineUnreachable(f"engine {lease.process.key} is unreachable: "
                                    f"{redact_url(str(exc))}") from None
        except aiohttp.ClientError as exc:  # it may have seen the request: never replayed
            raise UpstreamError(f"engine {lease.process.key} is unreachable: "
                                f"{redact_url(str(exc))}") from None

    async def _probe_only(self, continued: Continued, lease: Lease, started: float,
                          thinking: ThinkingRelay, stream: bool,
                          strip_usage: bool) -> web.StreamResponse:
        """The answer the probe wrote alone, as the engine would have sent it."""
        if stream:
            return await self.relay_stream(None, lease, started, thinking,
                                           strip_usage=strip_usage,
                                           source=_once(continued.probe_stream()))
        raw = continued.probe_answer()
        self._usage(answer_usage(raw, 0.0))
        return BoundedResponse(deadline=write_deadline(self.state, self.server, self.outcome),
                               body=await thinking.response(raw), status=200,
                               content_type="application/json")

    async def relay_stream(self, upstream: aiohttp.ClientResponse | None, lease: Lease,
                           started: float, thinking: ThinkingRelay | None = None, *,
                           strip_usage: bool = False, body: dict[str, Any] | None = None,
                           forced: ForcedToolCall | None = None,
                           continued: Continued | None = None,
                           source: AsyncIterator[bytes] | None = None) -> web.StreamResponse:
        """Relay the engine's stream (or ``source``, what lkn has of it already) to the
        client. A failure after the first byte is an error event on the stream (the status
        line went out long ago), never an exception."""
        writer = await self.stream.open()
        resp = writer.response
        relay = StreamRelay(lease.client.normalize_stream_data, strip_usage=strip_usage)
        first_at: float | None = None
        failure: str | None = None
        model = self.outcome.model or ""
        close = upstream.close if upstream is not None else _nothing
        try:
            if upstream is not None:
                source = upstream.content.iter_any()
            assert source is not None
            if not lease.client.openai_wire:  # e.g. Anthropic's events, as OpenAI chunks
                source = lease.client.translate_stream(source, body or {})
            if forced is not None:
                source = forced.stream(source)
            if continued is not None:
                source = continued.stream(source)
            # Only a splitting relay touches the bytes: no generator layer per chunk otherwise.
            relayed = thinking.stream(source) if thinking is not None and thinking.splits \
                else source
            if self.cache is not None:
                relayed = self.cache.tee(relayed)
            async for chunk in relayed:
                out = relay.feed(chunk)
                if first_at is None and relay.started:
                    first_at = time.monotonic()
                    self.outcome.ttft_s = first_at - started
                    self.state.metrics.ttft_seconds.observe(self.outcome.ttft_s, model)
                if out:
                    await writer.write(out)
            out = relay.finish()
            if out:
                await writer.write(out)
            if continued is not None and continued.anew:
                # found out too late for this stream (its events went out): not for the cache
                self._not_continued(lease)
                if self.cache is not None:
                    self.cache.decline()
        except asyncio.CancelledError:
            close()  # the client went away: the engine stops generating for nobody
            raise
        except ConnectionResetError:
            # A write to a gone client. First: aiohttp's ClientConnectionResetError is a
            # ClientError too, and must not be taken for the engine breaking off. Returned, not
            # raised: aiohttp would log every disconnect as an internal error with a traceback.
            close()
            self.outcome.client_gone = True
            return resp
        except asyncio.TimeoutError:
            failure = (f"engine {lease.process.key} sent nothing for "
                       f"{self.server.stream_idle_timeout_s:g}s")
        except EventTooLarge as exc:
            close()  # the rest of that event is nobody's to read
            failure = f"engine {lease.process.key} sent {exc}"
        except aiohttp.ClientError as exc:
            failure = f"engine {lease.process.key} broke off the stream: {exc}"
        self._usage(read_usage(relay.usage, relay.timings,
                               None if first_at is None else time.monotonic() - first_at))
        if failure is None and not relay.done:
            failure = (f"engine {lease.process.key} ended the stream without [DONE] "
                       f"(it stopped or crashed mid-answer)")
        if failure is not None:
            self.broken = True
            log.warning("stream for model=%s failed: %s", model, failure)
            try:
                await writer.write(frame_json(
                    UpstreamError(failure).body(self.outcome.request_id)))
            except ConnectionResetError:
                pass
            # A dead engine is a crash now, not at the next request: before the stream's end
            # reaches the client, whose next request would otherwise meet the corpse.
            await lease.process.confirm_alive()
        try:
            await writer.write_eof()
        except ConnectionResetError:
            pass
        return resp

    def _usage(self, usage: Usage | None) -> None:
        """The engine's usage report: metrics, and the traffic statistics' tokens/s."""
        outcome = self.outcome
        self.state.metrics.observe_usage(outcome.model or "", usage, outcome.key_id)
        if usage is not None:
            outcome.completion_tokens = usage.completion_tokens
            outcome.usage_prompt_tokens = usage.prompt_tokens
            outcome.reasoning_tokens = usage.reasoning_tokens


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _nothing() -> None:
    """Nothing to close: the stream came from lkn itself."""
