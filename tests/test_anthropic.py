"""Anthropic's Messages API as an upstream: the translation by tables, and the openai SDK
answered by a fake Anthropic server through lkn (whole answers, streams, errors, the key)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.engines.anthropic import StreamTranslator, from_message, to_messages_request
from lkn.errors import BadRequest
from tests.conftest import SECRET, Gateway, http, lua_str, write_config


@pytest.mark.parametrize("body, expected", [
    ({"messages": [{"role": "user", "content": "hi"}]},
     {"model": "claude", "max_tokens": 256,
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ({"messages": [{"role": "system", "content": "be brief"},
                   {"role": "developer", "content": [{"type": "text", "text": "no lists"}]},
                   {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
      "max_completion_tokens": 9, "max_tokens": 99, "stop": "END", "temperature": 0,
      "top_p": 0.5, "stream": True, "user": "u1", "seed": 3},
     {"model": "claude", "max_tokens": 9, "system": "be brief\n\nno lists",
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}],
      "stop_sequences": ["END"], "temperature": 0, "top_p": 0.5, "stream": True,
      "metadata": {"user_id": "u1"}}),
])
def test_requests_translate(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_messages_request(body, "claude", 256) == expected


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
])
def test_what_does_not_translate_is_a_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        to_messages_request(body, "claude", 256)
    assert info.value.param == param


def test_answers_and_events_translate() -> None:
    answer = from_message({"id": "msg_1", "content": [{"type": "text", "text": "Hi"},
                                                       {"type": "text", "text": "!"}],
                           "stop_reason": "max_tokens",
                           "usage": {"input_tokens": 3, "output_tokens": 2}}, "m")
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi!"}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    t = StreamTranslator("m", include_usage=True)
    out = [x for e in [
        {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 4}}},
        {"type": "content_block_start"}, {"type": "ping"},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Yo"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 1}},
        {"type": "message_stop"}] for x in t.feed(e)]
    assert [o["choices"][0]["delta"] for o in out[:2] if isinstance(o, dict)] == [
        {"role": "assistant", "content": ""}, {"content": "Yo"}]
    assert out[2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert out[3]["usage"]["total_tokens"] == 5 and out[4] == "[DONE]"  # type: ignore[index]
    assert t.feed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}) \
        == [{"error": {"message": "busy", "type": "overloaded_error", "param": None,
                       "code": None}}]


@pytest.fixture
def gw(upstream: Any, tmp_path: Path, gateway_factory: Any,
       monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Path]:
    url, capture = upstream("--api", "anthropic", "--name", "claude-x")
    monkeypatch.setenv("LKN_TEST_ANTHROPIC_KEY", SECRET)
    return gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "claude", default_max_tokens = 64,
              upstream = {{ url = {lua_str(url)}, api = "anthropic", model = "claude-x",
                           api_key_env = "LKN_TEST_ANTHROPIC_KEY" }} }} }}
""")), capture


MSG = [{"role": "system", "content": "Answer in five words."},
       {"role": "user", "content": "Capital of France?"}]


def test_the_openai_sdk_is_answered_by_anthropic(gw: tuple[Gateway, Path]) -> None:
    g, capture = gw
    client = g.client()
    answer = client.chat.completions.create(model="claude", messages=MSG)
    assert answer.choices[0].message.content == "Paris is the capital."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens == 11
    short = client.chat.completions.create(model="claude", messages=MSG, max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="claude", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Paris is the capital."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    sent = [json.loads(x)["body"] for x in capture.read_text().splitlines()]
    assert sent[0]["system"] == "Answer in five words." and sent[0]["max_tokens"] == 64
    assert "stream_options" not in sent[2]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="claude", prompt="x")
    assert "only chat completions" in info.value.message


def test_anthropic_errors_are_openai_errors_and_the_key_stays_secret(
        upstream: Any, tmp_path: Path, gateway_factory: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url, _ = upstream("--api", "anthropic", "--name", "claude-x")
    wrong = "sk-ant-wrong-and-secret"
    monkeypatch.setenv("LKN_TEST_ANTHROPIC_KEY", wrong)
    g = gateway_factory(write_config(tmp_path, f"""
models = {{ {{ name = "claude", upstream = {{ url = {lua_str(url)}, api = "anthropic",
              model = "claude-x", api_key_env = "LKN_TEST_ANTHROPIC_KEY", health_path = "" }} }} }}
"""))
    r = http("POST", g.base_url + "/v1/chat/completions",
             json.dumps({"model": "claude", "messages": MSG}))
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["source"] == "upstream"
    assert "***" in err["message"] and wrong not in r.text and wrong not in caplog.text
