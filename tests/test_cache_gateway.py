"""The response cache end to end: the openai SDK against lkn in front of the fake engine, which
writes every request it gets to a capture file."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.gateway.reload import reload_config
from tests.conftest import Gateway, http, lua_str, write_config

MSG = [{"role": "user", "content": "hello there"}]
ANSWER = "".join(f" w{i}" for i in range(8))


def lua(binary: str, capture: Path, *, cache: str = "enabled = true, ttl_s = 600, max_mb = 4",
        args: str = "") -> str:
    return f"""
server = {{ stop_grace_s = 1 }}
models = {{
  {{ name = "fake", aliases = {{ "f" }}, binary = {lua_str(binary)}, model_file = "/x.gguf",
    ctx_size = 4096, args = {{ "--fake-capture", {lua_str(str(capture))}, {args} }},
    cache = {{ {cache} }} }},
  {{ name = "plain", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))} }} }},
}}
"""


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, capture: Path, gateway_factory: Any) -> Gateway:
    return gateway_factory(write_config(tmp_path, lua(fake_binary, capture)))


def engine_requests(capture: Path) -> list[dict]:
    if not capture.exists():
        return []
    return [json.loads(line) for line in capture.read_text().splitlines()]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = http("GET", gw.base_url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_second_identical_greedy_request_is_a_hit_the_engine_never_sees(
        gw: Gateway, capture: Path) -> None:
    client = gw.client()
    first = client.chat.completions.with_raw_response.create(
        model="fake", messages=MSG, temperature=0)
    second = client.chat.completions.with_raw_response.create(
        model="f", messages=MSG, temperature=0.0, user="someone else")  # alias, same request
    assert first.headers["x-lkn-cache"] == "miss" and second.headers["x-lkn-cache"] == "hit"
    assert second.headers["x-lkn-model"] == "fake" and "age" in second.headers
    fresh = {"id", "created"}  # a hit is a new answer: its own id (issue 20, item 6)
    assert first.parse().model_dump(exclude=fresh) == second.parse().model_dump(exclude=fresh)
    assert first.parse().id != second.parse().id
    assert second.parse().choices[0].message.content == ANSWER
    assert len(engine_requests(capture)) == 1
    assert metric(gw, "lkn_cache_requests_total", model="fake", result="miss") == 1
    assert metric(gw, "lkn_cache_requests_total", model="fake", result="hit") == 1
    assert metric(gw, "lkn_cache_entries", model="fake") == 1
    assert metric(gw, "lkn_cache_bytes", model="fake") > len(ANSWER)


def test_a_cached_answer_is_replayed_as_a_stream_the_sdk_parses(gw: Gateway,
                                                                  capture: Path) -> None:
    client = gw.client()
    original = client.chat.completions.create(model="fake", messages=MSG, temperature=0)
    with client.chat.completions.with_streaming_response.create(
            model="fake", messages=MSG, temperature=0, stream=True,
            stream_options={"include_usage": True}) as resp:
        assert resp.headers["x-lkn-cache"] == "hit"
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == original.choices[0].message.content == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == \
        original.usage.model_dump()  # type: ignore[union-attr]
    assert len(engine_requests(capture)) == 1


def test_a_streamed_miss_is_stored_and_answers_the_next_stream(gw: Gateway,
                                                                capture: Path) -> None:
    client = gw.client()

    def streamed() -> tuple[str, str]:
        with client.chat.completions.with_streaming_response.create(
                model="fake", messages=MSG, temperature=0, stream=True) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            return resp.headers["x-lkn-cache"], text

    assert streamed() == ("miss", ANSWER)
    assert streamed() == ("hit", ANSWER)
    assert len(engine_requests(capture)) == 1
    # The stream had no usage (the client did not ask): a whole answer must report it, so the
    # engine answers once more, and that complete answer replaces the entry.
    whole = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=0)
    assert whole.headers["x-lkn-cache"] == "miss" and whole.parse().usage is not None
    again = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=0)
    assert again.headers["x-lkn-cache"] == "hit"
    assert len(engine_requests(capture)) == 2


def test_no_cache_and_lkn_cache_false_bypass_and_store_nothing(gw: Gateway,
                                                               capture: Path) -> None:
    client = gw.client()
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(
            model="fake", messages=MSG, temperature=0,
            extra_headers={"Cache-Control": "no-cache"})
        assert r.headers["x-lkn-cache"] == "bypass"
        r = client.chat.completions.with_raw_response.create(
            model="fake", messages=MSG, temperature=0, extra_body={"lkn": {"cache": False}})
        assert r.headers["x-lkn-cache"] == "bypass"
    assert len(engine_requests(capture)) == 4
    assert "lkn" not in engine_requests(capture)[-1]
    r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                         temperature=0)
    assert r.headers["x-lkn-cache"] == "miss"  # the bypassed answers were not stored
    assert metric(gw, "lkn_cache_requests_total", model="fake", result="bypass") == 4
    bad = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "fake", "messages": MSG, "lkn": {"cache": "no"}}))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lkn.cache"


def test_sampled_requests_are_never_cached_but_seeded_ones_are(gw: Gateway,
                                                               capture: Path) -> None:
    client = gw.client()
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=1)
        assert r.headers["x-lkn-cache"] == "bypass"
        r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=0, n=2)
        assert r.headers["x-lkn-cache"] == "bypass"
    assert len(engine_requests(capture)) == 4
    seeded = [client.chat.completions.with_raw_response.create(
        model="fake", messages=MSG, temperature=1, seed=7).headers["x-lkn-cache"]
        for _ in range(2)]
    assert seeded == ["miss", "hit"] and len(engine_requests(capture)) == 5


def test_failed_answers_are_not_stored_and_uncached_models_say_nothing(
        gw: Gateway, capture: Path) -> None:
    body = json.dumps({"model": "fake", "messages": MSG, "temperature": 0,
                       "fake_error_status": 500})
    for _ in range(2):
        r = http("POST", gw.base_url + "/v1/chat/completions", body)
        assert r.status_code == 500 and r.headers["x-lkn-cache"] == "miss"
    r = gw.client().chat.completions.with_raw_response.create(model="plain", messages=MSG,
                                                              temperature=0)
    assert "x-lkn-cache" not in r.headers
    assert len(engine_requests(capture)) == 3


def test_a_stream_the_engine_cut_is_not_stored(tmp_path: Path, fake_binary: str,
                                                capture: Path, gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, lua(fake_binary, capture,
                                                    args='"--fake-cut-stream"')))
    client = gw.client()
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
                model="fake", messages=MSG, temperature=0, stream=True) as resp:
            assert resp.headers["x-lkn-cache"] == "miss"
            with pytest.raises(openai.APIError):
                list(resp.parse())
    assert len(engine_requests(capture)) == 2
    assert metric(gw, "lkn_cache_entries", model="fake") == 0


def test_completions_are_cached_too(gw: Gateway, capture: Path) -> None:
    client = gw.client()
    first = client.completions.with_raw_response.create(model="fake", prompt="a b",
                                                        temperature=0)
    stream = client.completions.create(model="fake", prompt="a b", temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert first.headers["x-lkn-cache"] == "miss" and text == first.parse().choices[0].text
    assert len(engine_requests(capture)) == 1


def test_reload_that_changes_the_model_drops_its_entries(
        tmp_path: Path, fake_binary: str, capture: Path, gw: Gateway) -> None:
    client = gw.client()

    def ask() -> str:
        return client.chat.completions.with_raw_response.create(
            model="fake", messages=MSG, temperature=0).headers["x-lkn-cache"]

    assert [ask(), ask()] == ["miss", "hit"]
    # Only the cache's own settings change: the model is the same, its entries stay.
    (tmp_path / "lkn.cfg.lua").write_text(lua(fake_binary, capture,
                                              cache="enabled = true, ttl_s = 300"))
    assert gw.call(reload_config, gw.app) is True
    assert ask() == "hit"
    # The engine's arguments change: what answers is another engine, so the entries go.
    (tmp_path / "lkn.cfg.lua").write_text(lua(fake_binary, capture, args='"--fake-tokens", 3',
                                              cache="enabled = true, ttl_s = 300"))
    assert gw.call(reload_config, gw.app) is True
    assert metric(gw, "lkn_cache_entries", model="fake") == 0
    assert metric(gw, "lkn_cache_evictions_total", model="fake", reason="reload") == 1
    r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                         temperature=0)
    assert r.headers["x-lkn-cache"] == "miss" and r.parse().choices[0].message.content == \
        " w0 w1 w2"
    assert len(engine_requests(capture)) == 2
    health = http("GET", gw.base_url + "/status").json()
    assert health["cache"][0]["model"] == "fake" and health["cache"][0]["entries"] == 1


@pytest.mark.engine
def test_real_llama_server_stream_is_stored_and_replayed(tmp_path: Path,
                                                         gateway_factory: Any) -> None:
    from tests.conftest import smollm2_path
    lua_text = f"""
server = {{ stop_grace_s = 5, log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "smol", model_file = {lua_str(smollm2_path())}, gpu_layers = 0, ctx_size = 512,
    args = {{ "--threads", 1 }}, cache = {{ enabled = true }} }},
}}
"""
    client = gateway_factory(write_config(tmp_path, lua_text)).client()
    ask = {"model": "smol", "messages": [{"role": "user", "content": "Name a color."}],
           "temperature": 0, "max_tokens": 12}

    def streamed(**kw: Any) -> tuple[str, str, Any]:
        with client.chat.completions.with_streaming_response.create(**ask, stream=True,
                                                                    **kw) as resp:
            chunks = list(resp.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return resp.headers["x-lkn-cache"], text, chunks[-1].usage

    cache, text, _ = streamed(stream_options={"include_usage": True})
    assert cache == "miss" and text
    again, replayed, usage = streamed(stream_options={"include_usage": True})
    assert (again, replayed) == ("hit", text) and usage is not None
    whole = client.chat.completions.with_raw_response.create(**ask)
    assert whole.headers["x-lkn-cache"] == "hit"
    assert whole.parse().choices[0].message.content == text
    assert whole.parse().usage == usage
