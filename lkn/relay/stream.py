"""What the gateway sends on of an upstream SSE stream, and what it learns from it (pure).

The relay's hot path: a run of complete events that are plain ``data: X`` lines (what engines
send) and carry neither an error nor a usage object goes out as the very bytes that came in, in
one write. Only the rest is parsed event by event: error events are normalized by the engine's
client, comments become ``: ping``, ``[DONE]`` is noted, and a usage object is read for the
metrics — and dropped with its chunk when lkn asked for it on the client's behalf only
(``stream_options.include_usage``; the chunk with ``"choices": []`` exists just for that).
"""
from __future__ import annotations

from typing import Any, Callable

from lkn import fastjson
from lkn.sse import DONE, EventSplitter, SSEParser, frame, holds_done, plain_data_events

PING = b": ping\n\n"
# A usage object (not ``"usage": null``, which SGLang may put on every chunk), and an error.
_USAGE = (b'"usage":{', b'"usage": {')
_ERROR = b'"error"'


class StreamRelay:
    def __init__(self, normalize: Callable[[str], str], *, strip_usage: bool) -> None:
        self._normalize = normalize
        self._strip_usage = strip_usage
        self._splitter = EventSplitter()
        self.done = False          # [DONE] went out
        self.started = False       # a data event other than [DONE] went out
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None  # llama-server's, next to the usage

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send the client for ``chunk`` (maybe none yet)."""
        events = self._splitter.feed(chunk)
        if not events:
            return b""
        if (plain_data_events(events) and _ERROR not in events
                and _USAGE[0] not in events and _USAGE[1] not in events):
            if holds_done(events):
                self.done = True
                self.started = self.started or events.count(b"\n\n") > 1
            else:
                self.started = True
            return events
        parser = SSEParser()
        return b"".join([self._event(e.data, e.comment) for e in parser.feed(events)])

    def finish(self) -> bytes:
        """At the end of the upstream: an event left open (no blank line after it)."""
        rest = self._splitter.rest()
        if not rest.strip():
            return b""
        parser = SSEParser()
        events = [*parser.feed(rest), *parser.flush()]
        return b"".join([self._event(e.data, False) for e in events if e.data])

    def _event(self, data: str | None, comment: bool) -> bytes:
        if comment:
            return PING  # keep proxies and clients patient
        if data is None:
            return b""
        if data == DONE:
            self.done = True
            return frame(DONE)
        if '"usage"' in data and self._read_usage(data):
            return b""
        self.started = True
        return frame(self._normalize(data))

    def _read_usage(self, data: str) -> bool:
        """Note the chunk's usage; True when the chunk is to be dropped."""
        try:
            obj = fastjson.loads(data)
        except ValueError:
            return False
        if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
            return False
        self.usage = obj["usage"]
        timings = obj.get("timings")
        self.timings = timings if isinstance(timings, dict) else self.timings
        return self._strip_usage and obj.get("choices") == []
