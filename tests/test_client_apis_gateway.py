"""Every lkn feature applies whatever API the client speaks: the official anthropic, openai
(Responses) and ollama clients against lkn in front of the fake engine (which writes every
request it gets to a capture file): the cache (a hit answered in the API's shape, streamed
too), the homeostat (its headers), request ids, and the canonical request the engine gets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, lua_str, write_config

USER = [{"role": "user", "content": "hello there"}]
ANSWER = "".join(f" w{i}" for i in range(8))


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, capture: Path, gateway_factory: Any) -> Gateway:
    lua = f"""
server = {{ stop_grace_s = 1 }}
models = {{
  {{ name = "fake", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))} }},
    cache = {{ enabled = true, ttl_s = 600, max_mb = 4 }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.5, intervention = "none" }} }},
}}
"""
    return gateway_factory(write_config(tmp_path, lua))


def engine_requests(capture: Path) -> list[dict[str, Any]]:
    lines = capture.read_text().splitlines() if capture.exists() else []
    return [json.loads(line) for line in lines]


def test_anthropic_answers_are_cached_and_gated(gw: Gateway, capture: Path) -> None:
    import anthropic
    with anthropic.Anthropic(base_url=gw.base_url, api_key="x", max_retries=0) as client:
        body = {"model": "fake", "max_tokens": 16, "messages": USER, "system": "Be brief.",
                "extra_body": {"temperature": 0}}
        first = client.messages.with_raw_response.create(**body)
        second = client.messages.with_raw_response.create(**body,
                                                          extra_headers={"x-request-id": "r-2"})
        assert first.headers["x-lkn-cache"] == "miss" and second.headers["x-lkn-cache"] == "hit"
        assert first.headers["x-lkn-mode"] == "FLUID"  # probed: the fake's entropy is low
        assert second.headers["x-request-id"] == "r-2"
        a, b = first.parse(), second.parse()
        assert a.content[0].text == b.content[0].text and a.content[0].text
        assert a.id != b.id  # a hit is a new message
        with client.messages.stream(**body) as stream:  # the stream of a hit, in events
            assert stream.get_final_message().content[0].text == a.content[0].text
    # the engine answered once: the probe's token, then the rest of the 16 from it
    chats = [r for r in engine_requests(capture) if r.get("max_tokens") == 15]
    assert len(chats) == 1
    assert chats[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chats[0]["messages"][-1]["role"] == "assistant"


def test_responses_stream_replayed_from_the_cache(gw: Gateway) -> None:
    client = gw.client()
    kw: dict[str, Any] = {"model": "fake", "input": "hello there", "temperature": 0,
                          "max_output_tokens": 16}
    whole = client.responses.create(**kw)
    events = []
    with client.responses.stream(**kw) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert final.output_text == whole.output_text and final.id != whole.id
    raw = client.responses.with_raw_response.create(**kw)
    assert raw.headers["x-lkn-cache"] == "hit"


def test_ollama_requests_are_gated_and_recorded(gw: Gateway) -> None:
    import ollama
    client = ollama.Client(host=gw.base_url)
    try:
        answer = client.chat(model="fake", messages=USER, stream=False,
                             options={"temperature": 0, "num_predict": 16})
        assert answer.message.content
        streamed = "".join(c.message.content for c in client.chat(
            model="fake", messages=USER, stream=True,
            options={"temperature": 0, "num_predict": 16}))
        assert streamed == answer.message.content  # a hit, replayed as NDJSON
    finally:
        client._client.close()
    events = gw.call(lambda: gw.state.bus.recent(kinds={"request"}))
    apis = [e["api"] for e in events]
    assert apis and set(apis) == {"ollama"}
