from __future__ import annotations

import json

import pytest

from lkn.sse import EventSplitter, plain_data_events
from lkn.relay.stream import StreamRelay

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
USAGE_CHUNK = b"data: " + json.dumps({"choices": [], "usage": USAGE,
                                      "timings": {"predicted_ms": 40.0}}).encode() + b"\n\n"
ERROR_EVENT = b'data: {"error":{"message":"boom","code":500}}\n\n'


def normalize(data: str) -> str:
    return "NORMALIZED" if '"error"' in data else data


def relay_all(chunks: list[bytes], strip_usage: bool = False) -> tuple[bytes, StreamRelay]:
    relay = StreamRelay(normalize, strip_usage=strip_usage)
    out = b"".join(relay.feed(c) for c in chunks) + relay.finish()
    return out, relay


@pytest.mark.parametrize("chunks, expected", [
    ([CHUNK + b"data: [DONE]\n\n"], CHUNK + b"data: [DONE]\n\n"),               # as it came
    ([CHUNK[:9], CHUNK[9:]], CHUNK),                                              # split
    ([b"data:" + CHUNK[5:]], CHUNK),                                              # no space
    ([CHUNK.replace(b"\n\n", b"\r\n\r\n")], CHUNK),                               # CRLF
    ([b": keep-alive\n\n", CHUNK], b": ping\n\n" + CHUNK),                        # comment
    ([b"data: a\ndata: b\n\n"], b"data: a\ndata: b\n\n"),                        # multi-line
    ([CHUNK + ERROR_EVENT], CHUNK + b"data: NORMALIZED\n\n"),                     # error event
    ([b"data: tail"], b"data: tail\n\n"),                                         # no blank line
    ([b"event: x\ndata: y\n\n"], b"data: y\n\n"),
])
def test_relay_sends_what_the_client_must_see(chunks: list[bytes], expected: bytes) -> None:
    assert relay_all(chunks)[0] == expected


@pytest.mark.parametrize("chunks, done, started", [
    ([CHUNK, b"data: [DONE]\n\n"], True, True),
    ([CHUNK + b"data: [DONE]\n\n"], True, True),
    ([b"data: [DONE]\n\n"], True, False),
    ([b"data: [DONE]"], True, False),          # at EOF without its blank line
    ([CHUNK], False, True),
    ([b": ping\n\n"], False, False),
    ([b'data: {"x":"data: [DONE]"}\n\n'], False, True),
])
def test_relay_notes_done_and_the_first_event(chunks: list[bytes], done: bool,
                                              started: bool) -> None:
    _, relay = relay_all(chunks)
    assert (relay.done, relay.started) == (done, started)


@pytest.mark.parametrize("strip, expected", [
    (True, CHUNK + b"data: [DONE]\n\n"),
    (False, CHUNK + USAGE_CHUNK + b"data: [DONE]\n\n"),
])
def test_usage_chunk_is_read_and_dropped_only_when_lkn_asked_for_it(strip: bool,
                                                                     expected: bytes) -> None:
    out, relay = relay_all([CHUNK + USAGE_CHUNK + b"data: [DONE]\n\n"], strip_usage=strip)
    assert out == expected
    assert relay.usage == USAGE and relay.timings == {"predicted_ms": 40.0}


def test_usage_on_a_chunk_with_choices_is_read_and_kept() -> None:
    chunk = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {}}],
                                    "usage": USAGE}).encode() + b"\n\n"
    out, relay = relay_all([chunk], strip_usage=True)
    assert out == chunk and relay.usage == USAGE


def test_null_usage_stays_on_the_fast_path() -> None:
    chunk = b'data: {"choices":[],"usage":null}\n\n'
    out, relay = relay_all([chunk], strip_usage=True)
    assert out == chunk and relay.usage is None


@pytest.mark.parametrize("events, plain", [
    (CHUNK, True),
    (CHUNK * 3, True),
    (b"data: [DONE]\n\n", True),
    (b"data: a\ndata: b\n\n", False),
    (b"data:a\n\n", False),
    (b"data: a\r\n\r\n", False),
    (b": ping\n\n", False),
    (b"data: a\n\n\n\ndata: b\n\n", False),
    (b"data: a\n\n: c\n\n", False),
])
def test_plain_data_events(events: bytes, plain: bool) -> None:
    assert plain_data_events(events) is plain


def test_splitter_keeps_an_open_event_for_the_next_chunk() -> None:
    s = EventSplitter()
    assert s.feed(b"data: a\n\ndata: b") == b"data: a\n\n"
    assert s.feed(b"\n") == b""
    assert s.feed(b"\n") == b"data: b\n\n"
    assert s.feed(b"data: c") == b""
    assert s.rest() == b"data: c"
