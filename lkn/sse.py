"""Server-sent events: an incremental parser for upstream streams and the framing we send.

Only what gateways need: ``data:`` lines (several join with newlines), comments (lines starting
with ``:``, llama-server's keep-alive pings) and the blank line that ends an event. Bytes may
arrive split anywhere, including inside a UTF-8 character or between ``\\r`` and ``\\n``.

The relay's fast path never decodes: ``complete_events`` cuts a byte stream at its last event
boundary and ``plain_data_events`` says whether a run of events is already framed exactly as
``frame`` would frame it again, so it can be sent on as it came.

An upstream event (or line) still open after ``MAX_UPSTREAM_LINE`` bytes raises
``EventTooLarge``: a broken or hostile upstream cannot make lkn buffer without end.
"""
from __future__ import annotations

from lkn import fastjson
from dataclasses import dataclass
from typing import Any, Iterator


MAX_UPSTREAM_LINE = 8 * 1024 * 1024  # bytes of one event, or one line, still without its end


class EventTooLarge(ValueError):
    """An upstream event or line longer than ``MAX_UPSTREAM_LINE`` without its end."""

    def __init__(self, limit: int) -> None:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        super().__init__(f"an event over {size} without its end")


@dataclass(frozen=True)
class Event:
    data: str | None  # None for a comment-only block
    comment: bool = False


class SSEParser:
    def __init__(self, limit: int = MAX_UPSTREAM_LINE) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._size = 0  # of the lines in _data
        self._comment = False
        self._limit = limit

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buf += chunk
        while True:
            idx = self._buf.find(b"\n")
            if idx < 0:
                if len(self._buf) > self._limit:
                    raise EventTooLarge(self._limit)
                return
            raw, self._buf = self._buf[:idx], self._buf[idx + 1:]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if line == "":
                if self._data:
                    yield Event("\n".join(self._data))
                elif self._comment:
                    yield Event(None, comment=True)
                self._data, self._size, self._comment = [], 0, False
            elif line.startswith(":"):
                self._comment = True
            elif line.startswith("data:"):
                self._size += idx
                if self._size > self._limit:
                    raise EventTooLarge(self._limit)
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # "event:", "id:" and "retry:" fields are not used by OpenAI-style streams

    def flush(self) -> Iterator[Event]:
        """An event left open at EOF (no trailing blank line)."""
        if self._buf.strip():
            yield from self.feed(b"\n")
        if self._data:
            yield Event("\n".join(self._data))
        self._data, self._size = [], 0


def frame(data: str) -> bytes:
    """One event; a payload with newlines becomes one ``data:`` line per line, as SSE requires
    (``data: a\\nb`` would make clients drop ``b``)."""
    if "\n" in data:
        return ("".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode("utf-8")
    return f"data: {data}\n\n".encode("utf-8")


def frame_json(obj: Any) -> bytes:
    return frame_bytes(fastjson.dumps(obj))


def frame_bytes(payload: bytes) -> bytes:
    """One event whose payload is already encoded (one line: JSON)."""
    return b"data: " + payload + b"\n\n"


def sse_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers of every event stream lkn sends: ``headers`` plus the stream's own."""
    return {**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"}


class EventSplitter:
    """Cuts a byte stream after its last complete event (a blank line, LF or CRLF); the rest
    waits for the next chunk, up to ``limit`` bytes."""

    def __init__(self, limit: int = MAX_UPSTREAM_LINE) -> None:
        self._buf = b""
        self._limit = limit

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        end = max(buf.rfind(b"\n\n") + 2, buf.rfind(b"\n\r\n") + 3)
        if end < 3:  # neither found (rfind gave -1)
            if len(buf) > self._limit:
                raise EventTooLarge(self._limit)
            self._buf = buf
            return b""
        self._buf = buf[end:]
        return buf[:end]

    def rest(self) -> bytes:
        """What never got its blank line (the stream ended mid-event)."""
        rest, self._buf = self._buf, b""
        return rest


def plain_data_events(events: bytes) -> bool:
    """Whether ``events`` (ending at an event boundary) holds only ``data: X\\n\\n`` events, LF
    line ends, one line each: exactly what ``frame`` makes of them, byte for byte."""
    pairs = events.count(b"\n\n")
    return (events.startswith(b"data: ") and b"\r" not in events
            and events.count(b"\n") == 2 * pairs
            and events.count(b"\n\ndata: ") == pairs - 1)


def holds_done(events: bytes) -> bool:
    """Whether plain ``events`` include the ``data: [DONE]`` event."""
    return events.startswith(b"data: [DONE]\n\n") or b"\n\ndata: [DONE]\n\n" in events


DONE = "[DONE]"
