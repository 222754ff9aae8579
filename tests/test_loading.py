"""Loading feedback: a streaming request that waits for an engine start gets its SSE headers at
once and progress comments (or reasoning deltas with loading_events), against a slow fake."""
from __future__ import annotations

import http.client as http_client
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.request import loading
from tests.conftest import Gateway, lua_str, read_until, write_config

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def make_gw(tmp_path: Path, fake_binary: str, gateway_factory: Any,
            monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(loading, "INTERVAL_S", 0.5)

    def make(model: str = "", args: str = '"--fake-load-s", 2') -> Gateway:
        return gateway_factory(write_config(tmp_path, f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1,
           log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "fake", binary = {lua_str(fake_binary)}, ctx_size = 4096,
              model_file = "/nonexistent/fake.gguf", args = {{ {args} }}, {model} }} }}
"""))
    return make


def test_a_cold_stream_gets_headers_at_once_and_loading_comments(make_gw: Any) -> None:
    gw = make_gw()
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"model": "fake", "messages": MSG, "stream": True}))
    resp = conn.getresponse()
    headers_after = time.monotonic() - t0
    assert resp.status == 200 and resp.headers["x-lkn-model"] == "fake"
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert headers_after < 1.5  # the engine needs 2 s to load
    lines = read_until(resp, b"data: ")
    comments = [x for x in lines if x.startswith(b": ")]
    assert comments[0].startswith(b": loading fake@4096, 0 s")
    assert len(comments) >= 2  # every 0.5 s here (INTERVAL_S), a few seconds in production
    read_until(resp, b"data: [DONE]")
    resp.close()
    conn.close()


def test_loading_events_arrive_as_reasoning_deltas_through_the_sdk(make_gw: Any) -> None:
    gw = make_gw(model="loading_events = true")
    chunks = list(gw.client().chat.completions.create(model="fake", messages=MSG, stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                        for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning.startswith("loading fake@4096, 0 s\n")
    assert content == "".join(f" w{i}" for i in range(8))


def test_an_error_after_the_headers_is_an_error_event(make_gw: Any) -> None:
    gw = make_gw(args='"--fake-load-s", 1, "--fake-exit-before-ready", 3')
    with pytest.raises(openai.APIError) as info:
        for _ in gw.client().chat.completions.create(model="fake", messages=MSG, stream=True):
            pass
    assert "failed to start" in info.value.message
    assert info.value.body["source"] == "lkn"  # type: ignore[index]
    assert info.value.body["request_id"].startswith("req-")  # type: ignore[index]


def test_a_ready_engine_answers_without_loading_feedback(make_gw: Any) -> None:
    gw = make_gw(args="")
    client = gw.client()
    client.chat.completions.create(model="fake", messages=MSG)
    with client.chat.completions.with_streaming_response.create(
            model="fake", messages=MSG, stream=True) as resp:
        assert resp.headers["x-lkn-variant"] == "4096"  # granted before the headers went out
        assert not any(line.startswith(": loading") for line in resp.iter_lines())
