"""The Ollama adapters: requests to the canonical body (tables), answers and the NDJSON stream
back, and the official ``ollama`` client against an app serving the adapters' output."""
from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, AsyncIterator

import ollama
import pytest
from aiohttp import web

from lkn.errors import BadRequest
from lkn.request.inbound.ollama import (OllamaChat, OllamaEmbed, OllamaGenerate,
                                        OllamaLegacyEmbedding)
from lkn.request.inbound.ollama_fields import (image_url, map_format, map_messages, map_options,
                                               map_think, parse_keep_alive)
from lkn.request.inbound.ollama_stream import OllamaStream, created_at, stats
from lkn.request.validate import VALIDATORS

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
GIF = base64.b64encode(b"GIF89a" + b"\0" * 16).decode()
WEBP = base64.b64encode(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 8).decode()


class FakeClock:
    """Monotonic nanoseconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def valid(adapter: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The canonical body, checked by lkn's own validator for the adapter's route."""
    out: dict[str, Any] = adapter.canonical(body)
    VALIDATORS[adapter.route](out)
    return out


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode())
                    + b"\n\n" for e in events)


def delta(**fields: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": fields,
                                                            "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5,
                                  "total_tokens": 17}}


def lines(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n") if line]


# ---------------------------------------------------------------------------- keep_alive
@pytest.mark.parametrize("value, seconds", [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), (2.5, 2.5), ("5m", 300.0),
    ("1h30m", 5400.0), ("10s", 10.0), ("1.5h", 5400.0), ("500ms", 0.5), ("+2m", 120.0),
    ("300", 300.0),  # refused by Ollama's Go parser (no unit); lkn takes it as seconds
    (-1, math.inf), ("-1m", math.inf), ("-1", math.inf), (-0.5, math.inf), ("-1h30m", math.inf),
])
def test_keep_alive_is_seconds_with_inf_for_forever(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "abc", "5 minutes", "5d", "m", "1h-30m", True,
                                   [5], {"s": 1}, "nan", "inf", float("nan")])
def test_bad_keep_alive_is_a_400(value: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_keep_alive(value)
    assert exc.value.param == "keep_alive"


# ------------------------------------------------------------------------------- options
@pytest.mark.parametrize("options, fields, num_ctx", [
    (None, {}, None),
    ({}, {}, None),
    ({"num_predict": 64}, {"max_tokens": 64}, None),
    ({"num_predict": -1}, {}, None),
    ({"num_predict": -2}, {}, None),
    ({"num_predict": 0}, {}, None),
    ({"num_predict": 64.0}, {"max_tokens": 64}, None),
    ({"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7},
     {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7}, None),
    ({"stop": ["\n\n", "User:"]}, {"stop": ["\n\n", "User:"]}, None),
    ({"stop": "END"}, {"stop": "END"}, None),
    ({"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5},
     {"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5}, None),
    ({"num_ctx": 8192}, {}, 8192),
    ({"num_gpu": 99, "num_thread": 8, "use_mmap": True, "no_such_option": "x"}, {}, None),
    ({"temperature": None}, {}, None),
])
def test_options_map_to_canonical_fields(options: Any, fields: dict[str, Any],
                                         num_ctx: int | None) -> None:
    assert map_options(options) == (fields, num_ctx)


@pytest.mark.parametrize("options, param", [
    ([1], "options"), ("x", "options"),
    ({"temperature": "hot"}, "options.temperature"), ({"temperature": True}, "options.temperature"),
    ({"top_k": 4.5}, "options.top_k"), ({"seed": "1"}, "options.seed"),
    ({"stop": [1]}, "options.stop"), ({"stop": 5}, "options.stop"),
    ({"num_predict": "many"}, "options.num_predict"), ({"num_ctx": 0}, "options.num_ctx"),
    ({"num_ctx": "4k"}, "options.num_ctx"),
])
def test_bad_options_are_400s_naming_the_option(options: Any, param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        map_options(options)
    assert exc.value.param == param


# --------------------------------------------------------------------------- format, think
@pytest.mark.parametrize("fmt, out", [
    (None, None), ("", None), ("json", {"type": "json_object"}),
    ({"type": "object", "properties": {"a": {"type": "integer"}}},
     {"type": "json_schema", "json_schema": {"name": "schema", "schema": {
         "type": "object", "properties": {"a": {"type": "integer"}}}}}),
])
def test_format(fmt: Any, out: Any) -> None:
    assert map_format(fmt) == out


@pytest.mark.parametrize("fmt", ["yaml", 1, ["json"], True])
def test_bad_format_is_a_400(fmt: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        map_format(fmt)
    assert exc.value.param == "format"


@pytest.mark.parametrize("think, out", [
    (None, {}), (True, {"chat_template_kwargs": {"enable_thinking": True}}),
    (False, {"reasoning_effort": "none"}), ("low", {"reasoning_effort": "low"}),
    ("medium", {"reasoning_effort": "medium"}), ("high", {"reasoning_effort": "high"}),
    ("max", {"reasoning_effort": "xhigh"}),
])
def test_think(think: Any, out: dict[str, Any]) -> None:
    assert map_think(think) == out


@pytest.mark.parametrize("think", ["extreme", 1, "true", {"on": True}])
def test_bad_think_is_a_400(think: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        map_think(think)
    assert exc.value.param == "think"


# -------------------------------------------------------------------------------- images
@pytest.mark.parametrize("image, url", [
    (PNG, f"data:image/png;base64,{PNG}"), (JPEG, f"data:image/jpeg;base64,{JPEG}"),
    (GIF, f"data:image/gif;base64,{GIF}"), (WEBP, f"data:image/webp;base64,{WEBP}"),
    ("data:image/png;base64,AAAA", "data:image/png;base64,AAAA"),
])
def test_images_become_data_urls_with_a_sniffed_type(image: str, url: str) -> None:
    assert image_url(image, "images[0]") == {"type": "image_url", "image_url": {"url": url}}


@pytest.mark.parametrize("image", ["not base64!", base64.b64encode(b"plain text").decode(),
                                   "", 5, None])
def test_bad_images_are_400s(image: Any) -> None:
    with pytest.raises(BadRequest) as exc:
        image_url(image, "messages[0].images[0]")
    assert exc.value.param == "messages[0].images[0]"


# ------------------------------------------------------------------------------ messages
def test_history_tool_calls_get_ids_and_json_arguments_and_results_match_by_name() -> None:
    out = map_messages([
        {"role": "user", "content": "weather and time?", "images": [PNG]},
        {"role": "assistant", "content": "", "thinking": "two tools",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                        {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "stray", "tool_name": "unknown"},
    ])
    assert out[0] == {"role": "user", "content": [
        {"type": "text", "text": "weather and time?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}
    assert out[1]["reasoning_content"] == "two tools"
    assert out[1]["tool_calls"] == [
        {"id": "call_1_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_1_1", "type": "function",
         "function": {"name": "get_time", "arguments": "{}"}}]
    assert out[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1_1"}
    assert out[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0"}
    assert out[4] == {"role": "tool", "content": "stray"}


def test_tool_results_keep_their_own_ids_and_unnamed_ones_take_the_next_call() -> None:
    out = map_messages([
        {"role": "assistant", "tool_calls": [
            {"id": "a1", "function": {"name": "f", "arguments": {"x": 1}}},
            {"id": "a2", "function": {"name": "f", "arguments": {"x": 2}}}]},
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "given", "tool_call_id": "zz"},
        {"role": "tool", "content": "two", "tool_name": "f"},
    ])
    assert out[0]["content"] == ""
    assert [m.get("tool_call_id") for m in out[1:]] == ["a1", "zz", "a2"]


@pytest.mark.parametrize("messages, param", [
    ("hi", "messages"), ([1], "messages[0]"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": ["parts"]}], "messages[0].content"),
    ([{"role": "user", "content": "x", "images": "AAAA"}], "messages[0].images"),
    ([{"role": "system", "content": "x", "images": [PNG]}], "messages[0].images"),
    ([{"role": "assistant", "tool_calls": {"function": {}}}], "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}],
     "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
     "messages[0].tool_calls[0].function.arguments"),
])
def test_malformed_messages_are_400s_with_the_param(messages: Any, param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        map_messages(messages)
    assert exc.value.param == param


# ---------------------------------------------------------------------------------- chat
def test_chat_streams_by_default_and_keeps_request_facts() -> None:
    adapter = OllamaChat()
    out = valid(adapter, {
        "model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_ctx": 16384, "num_predict": 100, "temperature": 0.3},
        "keep_alive": "10m", "think": "high", "format": "json",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
    assert out == {
        "model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100, "temperature": 0.3, "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "stream": True, "stream_options": {"include_usage": True}}
    assert (adapter.route, adapter.model, adapter.min_ctx, adapter.keep_alive_s) == \
        ("chat", "qwen3:8b", 16384, 600.0)
    assert adapter.load_only is False and adapter.stream is True


def test_chat_stream_false_is_a_whole_answer() -> None:
    out = valid(OllamaChat(), {"model": "m", "stream": False,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert out["stream"] is False and "stream_options" not in out


@pytest.mark.parametrize("messages", [None, []])
def test_chat_without_messages_is_a_load_call(messages: Any) -> None:
    adapter = OllamaChat()
    body: dict[str, Any] = {"model": "m", "keep_alive": 0}
    if messages is not None:
        body["messages"] = messages
    out = valid(adapter, body)
    assert adapter.load_only and out["max_tokens"] == 1 and out["stream"] is False
    answer = adapter.answer({})
    assert answer["done_reason"] == "unload" and answer["message"] == {"role": "assistant",
                                                                       "content": ""}


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "model"), ({"model": 5, "messages": []}, "model"),
    ({"model": "", "messages": []}, "model"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [], "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [], "tools": {"f": 1}}, "tools"),
    ({"model": "m", "messages": [], "tools": ["f"]}, "tools"),
    ({"model": "m", "messages": [], "keep_alive": "forever"}, "keep_alive"),
    ({"model": "m", "messages": [], "options": {"top_k": "x"}}, "options.top_k"),
    ({"model": "m", "messages": [], "format": "xml"}, "format"),
    ({"model": "m", "messages": [], "think": "lots"}, "think"),
])
def test_malformed_chat_bodies_are_400s_with_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        OllamaChat().canonical(body)
    assert exc.value.param == param


def test_chat_answer_carries_thinking_tool_calls_and_durations() -> None:
    clock = FakeClock()
    adapter = OllamaChat(clock=clock)
    adapter.canonical({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]})
    clock.now += 3_000_000_000
    out = adapter.answer({
        "object": "chat.completion", "model": "engine-name",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "reasoning_content": "hmm",
            "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "g",
                                                              "arguments": "not json"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        "timings": {"prompt_n": 9, "prompt_ms": 100.0, "predicted_n": 4, "predicted_ms": 400.0}})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", out.pop("created_at"))
    assert out == {
        "model": "qwen3",
        "message": {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
            {"id": "c1", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Paris"}}},
            {"id": "c2", "function": {"index": 1, "name": "g", "arguments": {}}}]},
        "done": True, "done_reason": "stop", "total_duration": 3_000_000_000,
        "load_duration": 2_500_000_000, "prompt_eval_count": 9,
        "prompt_eval_duration": 100_000_000, "eval_count": 4, "eval_duration": 400_000_000}


@pytest.mark.parametrize("finish, reason", [("stop", "stop"), ("length", "length"),
                                            ("tool_calls", "stop"), ("content_filter", "stop"),
                                            (None, "stop")])
def test_done_reason(finish: Any, reason: str) -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    out = adapter.answer({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]})
    assert out["done_reason"] == reason and out["message"]["content"] == "x"


@pytest.mark.parametrize("total, usage, timings, first, expected", [
    (1000, {"prompt_tokens": 3, "completion_tokens": 2}, None, None, (0, 0, 1000, 3, 2)),
    (1000, None, None, 250, (0, 250, 750, 0, 0)),
    (10_000_000, None, {"prompt_ms": 2.0, "predicted_ms": 3.0, "prompt_n": 7, "predicted_n": 8},
     None, (5_000_000, 2_000_000, 3_000_000, 7, 8)),
    (-5, None, None, None, (0, 0, 0, 0, 0)),
])
def test_stats_durations(total: int, usage: Any, timings: Any, first: int | None,
                         expected: tuple[int, ...]) -> None:
    out = stats(total, usage, timings, first)
    assert (out["load_duration"], out["prompt_eval_duration"], out["eval_duration"],
            out["prompt_eval_count"], out["eval_count"]) == expected
    assert out["total_duration"] == max(total, 0)


@pytest.mark.parametrize("ns, text", [(0, "1970-01-01T00:00:00Z"),
                                      (1_500_000_000, "1970-01-01T00:00:01.5Z"),
                                      (1_000_000_001, "1970-01-01T00:00:01.000000001Z")])
def test_created_at_is_rfc3339_nano(ns: int, text: str) -> None:
    assert created_at(ns) == text


# ------------------------------------------------------------------------------ generate
def test_generate_is_a_chat_with_system_and_images() -> None:
    adapter = OllamaGenerate()
    out = valid(adapter, {"model": "m", "prompt": "describe", "system": "be brief",
                          "images": [JPEG], "think": False, "context": [1, 2, 3],
                          "format": {"type": "object"}})
    assert adapter.route == "chat" and not adapter.load_only
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "describe"}, {
            "type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}}]}]
    assert out["reasoning_effort"] == "none" and "context" not in out
    assert out["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_raw_generate_is_a_completion_with_the_prompt_as_it_is() -> None:
    adapter = OllamaGenerate()
    out = valid(adapter, {"model": "m", "prompt": "<|im_start|>user\nhi", "raw": True,
                          "system": "ignored", "think": True, "stream": False,
                          "options": {"num_predict": 8}})
    assert adapter.route == "completions"
    assert out == {"model": "m", "prompt": "<|im_start|>user\nhi", "max_tokens": 8,
                   "stream": False}
    answer = adapter.answer({"object": "text_completion", "choices": [
        {"text": " hello", "index": 0, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8}})
    assert (answer["response"], answer["done_reason"], answer["context"], answer["eval_count"]) \
        == (" hello", "length", [], 8)


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "prompt": ""},
                                  {"model": "m", "prompt": "", "raw": True, "system": "s"}])
def test_generate_with_an_empty_prompt_is_a_load_call(body: dict[str, Any]) -> None:
    adapter = OllamaGenerate()
    out = valid(adapter, body)
    assert adapter.load_only and adapter.route == "chat"
    assert out["max_tokens"] == 1 and out["stream"] is False
    answer = adapter.answer({"choices": [{"message": {"content": "x"}}]})
    assert (answer["response"], answer["done"], answer["done_reason"]) == ("", True, "load")


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ({"model": "m", "prompt": 5}, "prompt"), ({"model": "m", "prompt": "x", "system": 1}, "system"),
    ({"model": "m", "prompt": "x", "raw": "yes"}, "raw"),
    ({"model": "m", "prompt": "x", "raw": True, "images": [PNG]}, "images"),
    ({"model": "m", "prompt": "x", "images": "AAAA"}, "images"),
    ({"model": "m", "prompt": "x", "images": ["%%%"]}, "images[0]"),
    ({"prompt": "x"}, "model"),
])
def test_malformed_generate_bodies_are_400s_with_the_param(body: dict[str, Any],
                                                           param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        OllamaGenerate().canonical(body)
    assert exc.value.param == param


# --------------------------------------------------------------------------------- embed
@pytest.mark.parametrize("body, canonical, load_only", [
    ({"model": "e", "input": "hello"},
     {"model": "e", "encoding_format": "float", "input": "hello"}, False),
    ({"model": "e", "input": ["a", "b"], "dimensions": 256, "truncate": False,
      "options": {"num_ctx": 512, "temperature": 1}, "keep_alive": -1},
     {"model": "e", "encoding_format": "float", "input": ["a", "b"], "dimensions": 256}, False),
    ({"model": "e", "input": []}, {"model": "e", "encoding_format": "float", "input": ""}, True),
    ({"model": "e", "input": ""}, {"model": "e", "encoding_format": "float", "input": ""}, True),
])
def test_embed_forms(body: dict[str, Any], canonical: dict[str, Any], load_only: bool) -> None:
    adapter = OllamaEmbed()
    assert valid(adapter, body) == canonical
    assert adapter.route == "embeddings" and adapter.load_only is load_only


def test_embed_keeps_truncate_num_ctx_and_keep_alive() -> None:
    adapter = OllamaEmbed()
    adapter.canonical({"model": "e", "input": "x", "truncate": False, "keep_alive": "-1m",
                       "options": {"num_ctx": 512}})
    assert (adapter.truncate, adapter.min_ctx, adapter.keep_alive_s) == (False, 512, math.inf)


@pytest.mark.parametrize("body, param", [
    ({"model": "e"}, "input"), ({"model": "e", "input": 5}, "input"),
    ({"model": "e", "input": ["a", 1]}, "input"),
    ({"model": "e", "input": "x", "truncate": "no"}, "truncate"),
    ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "e", "input": "x", "dimensions": "256"}, "dimensions"),
    ({"input": "x"}, "model"),
])
def test_malformed_embed_bodies_are_400s(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        OllamaEmbed().canonical(body)
    assert exc.value.param == param


EMBEDDINGS = {"object": "list", "data": [
    {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
    {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "usage": {"prompt_tokens": 6, "total_tokens": 6}}


def test_embed_answer_orders_vectors_by_index() -> None:
    adapter = OllamaEmbed()
    adapter.canonical({"model": "nomic", "input": ["a", "b"]})
    out = adapter.answer(EMBEDDINGS)
    assert out["embeddings"] == [[0.1, 0.2], [0.3, 0.4]]
    assert (out["model"], out["prompt_eval_count"], out["load_duration"]) == ("nomic", 6, 0)
    assert out["total_duration"] >= 0


def test_legacy_embeddings_take_a_prompt_and_answer_one_vector() -> None:
    adapter = OllamaLegacyEmbedding()
    out = valid(adapter, {"model": "e", "prompt": "hi", "input": "ignored"})
    assert out["input"] == "hi"
    assert adapter.answer({"data": [{"index": 0, "embedding": [1.0]}]}) == {"embedding": [1.0]}
    empty = OllamaLegacyEmbedding()
    empty.canonical({"model": "e"})
    assert empty.load_only and empty.answer({}) == {"embedding": []}
    with pytest.raises(BadRequest) as exc:
        OllamaLegacyEmbedding().canonical({"model": "e", "prompt": ["x"]})
    assert exc.value.param == "prompt"


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 415, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("adapter", [OllamaChat, OllamaGenerate, OllamaEmbed,
                                     OllamaLegacyEmbedding])
def test_errors_are_ollama_shaped(status: int, adapter: type) -> None:
    body = {"error": {"message": f"failed with {status}", "type": "x", "code": None,
                      "param": None, "source": "lkn", "request_id": "r1"}}
    assert adapter().error(status, body) == {"error": f"failed with {status}"}


@pytest.mark.parametrize("body, message", [({"error": "plain"}, "plain"),
                                           ({"error": {}}, "the request failed"),
                                           ({}, "the request failed")])
def test_error_bodies_without_a_message(body: dict[str, Any], message: str) -> None:
    assert OllamaChat().error(500, body) == {"error": message}


def test_lkn_error_response_keeps_status_and_headers() -> None:
    response = OllamaChat().error_response(
        404, BadRequest("model 'x' not found").body("rid"), {"x-lkn-error-source": "lkn"})
    assert response.status == 404 and response.headers["x-lkn-error-source"] == "lkn"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"error": "model 'x' not found"}


def test_whole_engine_error_answer_becomes_ollama_shaped() -> None:
    response = web.Response(status=500, body=b'{"error":{"message":"boom","type":"server"}}',
                            content_type="application/json")
    out = OllamaGenerate().whole(response)
    assert isinstance(out, web.Response) and isinstance(out.body, bytes)
    assert out.status == 500 and json.loads(out.body) == {"error": "boom"}


# -------------------------------------------------------------------------------- stream
def ollama_stream(adapter: OllamaChat | OllamaGenerate) -> OllamaStream:
    transcoder = adapter.transcoder()
    assert isinstance(transcoder, OllamaStream)
    return transcoder


def test_chat_stream_sends_content_and_thinking_lines_then_the_final_object() -> None:
    clock = FakeClock()
    adapter = OllamaChat(clock=clock)
    adapter.canonical({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]})
    t = ollama_stream(adapter)
    out = t.feed(sse(delta(role="assistant", content="")))
    assert out == b""  # the empty role chunk says nothing to an Ollama client
    clock.now += 200
    out += t.feed(sse(delta(reasoning_content="let me")))
    out += t.feed(b": ping\n\n")  # a keepalive: NDJSON has no comment
    clock.now += 300
    out += t.feed(sse(delta(content="Hel")) + b"data: " + json.dumps(delta(content="lo"))
                  .encode()[:10])
    out += t.feed(json.dumps(delta(content="lo")).encode()[10:] + b"\n\n")
    out += t.feed(sse(finish("stop"), USAGE, "[DONE]"))
    out += t.finish()
    got = lines(out)
    assert [g.get("message") for g in got[:3]] == [
        {"role": "assistant", "content": "", "thinking": "let me"},
        {"role": "assistant", "content": "Hel"}, {"role": "assistant", "content": "lo"}]
    assert all(g["done"] is False and g["model"] == "qwen3" for g in got[:3])
    final = got[3]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 5)
    assert (final["total_duration"], final["prompt_eval_duration"], final["eval_duration"]) \
        == (500, 200, 300)
    assert len(got) == 4


def test_stream_gathers_tool_call_fragments_into_one_object_with_arguments() -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t = adapter.transcoder()
    out = t.feed(sse(
        delta(role="assistant", content=None, tool_calls=[
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "{\"city\": "}}]),
        delta(tool_calls=[{"index": 1, "id": "call_b", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "\"Paris\"}"}}]),
        finish("tool_calls"), USAGE, "[DONE]"))
    got = lines(out)
    assert len(got) == 2
    assert got[0]["done"] is False and got[0]["message"]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Paris"}}},
        {"id": "call_b", "function": {"index": 1, "name": "get_time", "arguments": {}}}]
    assert got[1]["done"] is True and got[1]["done_reason"] == "stop"


def test_tool_calls_without_a_finish_chunk_go_out_at_done() -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t = adapter.transcoder()
    got = lines(t.feed(sse(delta(tool_calls=[{"index": 0, "id": "x", "function": {
        "name": "f", "arguments": "{\"a\":1}"}}]), "[DONE]")))
    assert got[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert got[1]["done"] is True


def test_generate_stream_uses_response_and_context() -> None:
    adapter = OllamaGenerate()
    adapter.canonical({"model": "m", "prompt": "hi"})
    t = adapter.transcoder()
    got = lines(t.feed(sse(delta(role="assistant", content=""), delta(reasoning_content="r"),
                           delta(content="ok"), finish("length"), USAGE, "[DONE]")))
    assert [(g.get("response"), g.get("thinking")) for g in got[:2]] == [("", "r"), ("ok", None)]
    assert got[2]["done_reason"] == "length" and got[2]["context"] == []
    assert got[2]["response"] == "" and "message" not in got[2]


def test_raw_generate_stream_reads_text_completion_chunks() -> None:
    adapter = OllamaGenerate()
    adapter.canonical({"model": "m", "prompt": "1, 2,", "raw": True})
    t = adapter.transcoder()
    got = lines(t.feed(sse({"choices": [{"index": 0, "text": " 3", "finish_reason": None}]},
                           {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},
                           "[DONE]")))
    assert [g["response"] for g in got] == [" 3", ""] and got[1]["done"] is True


def test_stream_error_is_an_error_line_and_ends_the_stream() -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t = adapter.transcoder()
    out = t.feed(sse(delta(content="a"), {"error": {"message": "engine crashed",
                                                    "type": "upstream_error"}},
                     delta(content="late")))
    assert lines(out)[1:] == [{"error": "engine crashed"}]
    assert t.finish() == b""


@pytest.mark.parametrize("events, last", [
    ([delta(content="a")], {"error": "the answer ended before it was complete"}),
    ([delta(content="a"), finish("stop"), USAGE], "final"),
])
def test_stream_cut_without_done(events: list[dict[str, Any]], last: Any) -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t = adapter.transcoder()
    got = lines(t.feed(sse(*events)) + t.finish())
    if last == "final":
        assert got[-1]["done"] is True and got[-1]["eval_count"] == 5
    else:
        assert got[-1] == last


def test_cached_stream_replayed_whole_becomes_ndjson() -> None:
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    response = web.Response(body=sse(delta(content="hi"), finish("stop"), USAGE, "[DONE]"),
                            content_type="text/event-stream")
    out = adapter.whole(response)
    assert isinstance(out, web.Response) and isinstance(out.body, bytes)
    assert out.content_type == "application/x-ndjson"
    assert [g["done"] for g in lines(out.body)] == [False, True]


# ---------------------------------------------------------------- the official ollama client
TOOL_STREAM: list[dict[str, Any] | str] = [delta(role="assistant", content=""), delta(reasoning_content="need weather"),
               delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": "{\"ci"}}]),
               delta(tool_calls=[{"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]),
               finish("tool_calls"), USAGE, "[DONE]"]
TEXT_STREAM: list[dict[str, Any] | str] = [delta(role="assistant", content=""), delta(content="Hello"),
               delta(content=" there"), finish("stop"), USAGE, "[DONE]"]
CHAT_ANSWER = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
               "message": {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {
                       "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
               "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}}
GENERATE_ANSWER = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                   "message": {"role": "assistant", "content": "Paris."}}],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}


def ollama_app(seen: list[dict[str, Any]]) -> web.Application:
    """Serves each adapter's output for scripted canonical answers: stands in for lkn."""
    async def serve(request: web.Request) -> web.StreamResponse:
        kind = {"/api/chat": OllamaChat, "/api/generate": OllamaGenerate,
                "/api/embed": OllamaEmbed, "/api/embeddings": OllamaLegacyEmbedding}
        adapter = kind[request.path]()
        try:
            body = adapter.canonical(await request.json())
        except BadRequest as exc:
            return adapter.error_response(exc.status, exc.body(), {})
        VALIDATORS[adapter.route](body)
        seen.append(body)
        if adapter.route == "embeddings":
            return web.json_response(adapter.answer(EMBEDDINGS))
        if not body["stream"]:
            obj = CHAT_ANSWER if request.path == "/api/chat" else GENERATE_ANSWER
            return web.json_response(adapter.answer(obj))
        script = TOOL_STREAM if body.get("tools") else TEXT_STREAM
        response = web.StreamResponse(headers={"Content-Type": adapter.stream_content_type})
        await response.prepare(request)
        transcoder = adapter.transcoder()
        assert transcoder is not None
        for event in script:  # one canonical event at a time, as the relay writes them
            out = transcoder.feed(sse(event))
            if out:
                await response.write(out)
        await response.write(transcoder.finish())
        await response.write_eof()
        return response

    app = web.Application()
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
        app.router.add_post(path, serve)
    return app


@pytest.fixture
async def client(aiohttp_server: Any) -> AsyncIterator[Any]:
    seen: list[dict[str, Any]] = []
    server = await aiohttp_server(ollama_app(seen))
    sdk = ollama.AsyncClient(host=str(server.make_url("")))
    sdk.seen = seen  # type: ignore[attr-defined]
    yield sdk
    await sdk.close()


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


async def test_sdk_chat_stream_assembles_text(client: Any) -> None:
    parts = [p async for p in await client.chat(
        model="qwen3", messages=[{"role": "user", "content": "hi"}], stream=True,
        options={"num_ctx": 4096}, keep_alive="5m")]
    assert "".join(p.message.content for p in parts) == "Hello there"
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (12, 5)
    assert client.seen[-1]["stream"] is True


async def test_sdk_chat_stream_with_a_tool_call(client: Any) -> None:
    parts = [p async for p in await client.chat(
        model="qwen3", messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True, think=True)]
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}
    assert "".join(p.message.thinking or "" for p in parts) == "need weather"
    assert client.seen[-1]["tools"][0]["function"]["name"] == "get_weather"
    assert client.seen[-1]["chat_template_kwargs"] == {"enable_thinking": True}


async def test_sdk_chat_whole_answer_with_a_tool_call_and_the_result_back(client: Any) -> None:
    first = await client.chat(model="qwen3", tools=[WEATHER_TOOL], stream=False,
                              messages=[{"role": "user", "content": "weather in Paris?"}])
    call = first.message.tool_calls[0]
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather",
                                                                   {"city": "Paris"})
    assert first.done and first.eval_count == 10
    await client.chat(model="qwen3", tools=[WEATHER_TOOL], stream=False, messages=[
        {"role": "user", "content": "weather in Paris?"}, first.message,
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
    history = client.seen[-1]["messages"]
    assert json.loads(history[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert history[2]["tool_call_id"] == history[1]["tool_calls"][0]["id"]


async def test_sdk_generate_whole_and_streamed(client: Any) -> None:
    whole = await client.generate(model="qwen3", prompt="capital of France?")
    assert (whole.response, whole.done_reason, whole.eval_count) == ("Paris.", "stop", 2)
    parts = [p async for p in await client.generate(model="qwen3", prompt="hi", stream=True)]
    assert "".join(p.response for p in parts) == "Hello there" and parts[-1].done


async def test_sdk_generate_load_call(client: Any) -> None:
    loaded = await client.generate(model="qwen3")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


async def test_sdk_embed_and_legacy_embeddings(client: Any) -> None:
    out = await client.embed(model="nomic", input=["a", "b"], dimensions=2)
    assert [list(v) for v in out.embeddings] == [[0.1, 0.2], [0.3, 0.4]]
    assert out.prompt_eval_count == 6 and client.seen[-1]["dimensions"] == 2
    legacy = await client.embeddings(model="nomic", prompt="a")
    assert list(legacy.embedding) == [0.1, 0.2]


async def test_sdk_sees_a_400_as_a_response_error(client: Any) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        await client.chat(model="qwen3", messages=[{"role": "user", "content": "x"}],
                          keep_alive="forever")
    assert exc.value.status_code == 400 and "keep_alive" in exc.value.error


def test_stream_lines_are_never_empty() -> None:
    """The ollama client parses every line as JSON: an empty line would break it."""
    adapter = OllamaChat()
    adapter.canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t = adapter.transcoder()
    out = t.feed(b": ping\n\n" + sse(*TEXT_STREAM)) + t.finish()
    assert all(line for line in out.split(b"\n")[:-1])
