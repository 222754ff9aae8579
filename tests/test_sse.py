from __future__ import annotations

import pytest

from lkn.sse import Event, SSEParser, frame


def parse_all(chunks: list[bytes]) -> list[Event]:
    p = SSEParser()
    out = [e for c in chunks for e in p.feed(c)]
    return out + list(p.flush())


@pytest.mark.parametrize("chunks, expected", [
    ([b'data: {"a":1}\n\ndata: [DONE]\n\n'], [Event('{"a":1}'), Event("[DONE]")]),
    ([b"da", b"ta: x\r", b"\n\r\n"], [Event("x")]),                       # split anywhere, CRLF
    ([b": ping\n\n", b"data: y\n\n"], [Event(None, comment=True), Event("y")]),
    ([b"data: a\ndata: b\n\n"], [Event("a\nb")]),                          # multi-line data
    ([b"data:nospace\n\n"], [Event("nospace")]),
    ([b"data: tail-without-blank-line"], [Event("tail-without-blank-line")]),
    ([b"event: x\nid: 3\ndata: z\n\n"], [Event("z")]),
    ([b"data: \xc3", b"\xa9\n\n"], [Event("\u00e9")]),                      # split UTF-8
])
def test_sse_parser(chunks: list[bytes], expected: list[Event]) -> None:
    assert parse_all(chunks) == expected


def test_frame() -> None:
    assert frame("[DONE]") == b"data: [DONE]\n\n"


@pytest.mark.parametrize("data, framed", [
    ("a\nb", b"data: a\ndata: b\n\n"),
    ("one\n\nthree", b"data: one\ndata: \ndata: three\n\n"),
    ("x\n", b"data: x\ndata: \n\n"),
])
def test_multi_line_data_is_framed_one_data_line_per_line(data: str, framed: bytes) -> None:
    assert frame(data) == framed
    assert parse_all([framed]) == [Event(data)]  # what a client reads back is the payload
