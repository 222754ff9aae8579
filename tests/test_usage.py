from __future__ import annotations

from typing import Any

import pytest

from lkn import fastjson
from lkn.engines.upstream import with_usage
from lkn.ops.usage import Usage, answer_usage, read_usage

U = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


@pytest.mark.parametrize("usage, timings, wall_s, expected", [
    (U, None, 2.0, Usage(10, 20, 10.0)),
    (U, {"predicted_ms": 500.0}, 2.0, Usage(10, 20, 40.0)),     # the engine's decode time wins
    (U, {"predicted_ms": 0}, 4.0, Usage(10, 20, 5.0)),
    (U, None, None, Usage(10, 20, None)),
    (U, None, 0.0, Usage(10, 20, None)),
    ({**U, "completion_tokens": 0}, None, 1.0, Usage(10, 0, None)),
    ({"prompt_tokens": "x", "completion_tokens": True}, None, 1.0, Usage(0, 0, None)),
    (None, None, 1.0, None),
    ("usage", None, 1.0, None),
])
def test_read_usage(usage: Any, timings: Any, wall_s: float | None,
                    expected: Usage | None) -> None:
    assert read_usage(usage, timings, wall_s) == expected


@pytest.mark.parametrize("raw, expected", [
    (b'{"a":[1,2.5,"\xc3\xa9"]}', {"a": [1, 2.5, "\u00e9"]}),
    (b'{"a":NaN}', "nan"),                # json accepts it, orjson does not: the fallback
    (b'"\\ud800"', "\ud800"),
])
def test_fastjson_loads_what_json_loads(raw: bytes, expected: Any) -> None:
    got = fastjson.loads(raw)
    assert (str(got["a"]) if expected == "nan" else got) == expected


@pytest.mark.parametrize("raw", [b"{", b"\xff", b""])
def test_fastjson_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        fastjson.loads(raw)


def test_fastjson_dumps_big_integers_like_json() -> None:
    assert fastjson.dumps({"seed": 2**70}) == b'{"seed":1180591620717411303424}'
    assert fastjson.dumps({"t": "\u00e9"}) == '{"t":"\u00e9"}'.encode()


@pytest.mark.parametrize("payload, asked, options", [
    ({}, True, {"include_usage": True}),
    ({"stream_options": {"include_usage": True}}, False, {"include_usage": True}),
    ({"stream_options": {"include_usage": False, "x": 1}}, True, {"include_usage": True, "x": 1}),
    ({"stream_options": None}, True, {"include_usage": True}),
])
def test_lkn_asks_for_usage_only_when_the_client_did_not(payload: dict[str, Any], asked: bool,
                                                         options: dict[str, Any]) -> None:
    assert with_usage(payload) is asked and payload["stream_options"] == options


@pytest.mark.parametrize("raw, expected", [
    (b'{"usage":{"prompt_tokens":3,"completion_tokens":4},"timings":{"predicted_ms":100}}',
     Usage(3, 4, 40.0)),
    (b'{"choices":[]}', None),
    (b"[1]", None),
    (b"not json", None),
])
def test_answer_usage(raw: bytes, expected: Usage | None) -> None:
    assert answer_usage(raw, 1.0) == expected
