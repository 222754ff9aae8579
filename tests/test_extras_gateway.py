"""llama-server's own endpoints through lkn against the fake llama-server (a child process):
a reranker model (``reranking = true`` starts the engine with ``--reranking``), the engine's
own refusal relayed as the engine's, and the lease given back after each."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, http, lua_str, write_config


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, gateway_factory: Any) -> Gateway:
    lua = f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, log_dir = {lua_str(str(tmp_path))} }}
models = {{
  {{ name = "ranker", binary = {lua_str(fake_binary)}, model_file = "/nonexistent/r.gguf",
    ctx_size = 512, vram_mb = 100, reranking = true }},
  {{ name = "chat", binary = {lua_str(fake_binary)}, model_file = "/nonexistent/c.gguf",
    ctx_size = 512, vram_mb = 100 }},
}}
"""
    return gateway_factory(write_config(tmp_path, lua))


def test_rerank_is_served_by_a_reranking_engine(gw: Gateway) -> None:
    body = {"model": "ranker", "query": "blue box", "top_n": 2,
            "documents": ["a red car", "a blue box", "the box"]}
    for path in ("/v1/rerank", "/rerank", "/v1/reranking"):
        r = http("POST", gw.base_url + path, json.dumps(body))
        assert r.status_code == 200 and r.headers["x-lkn-model"] == "ranker"
        assert [x["index"] for x in r.json()["results"]] == [1, 2]
    (proc,) = gw.call(gw.manager.processes)
    assert "--reranking" in proc.client.argv(1)
    assert gw.call(gw.manager.in_flight) == 0


def test_the_engines_refusal_is_relayed_as_the_engines(gw: Gateway) -> None:
    # "chat" has no reranking = true: lkn refuses before starting anything
    r = http("POST", gw.base_url + "/v1/rerank",
             json.dumps({"model": "chat", "query": "q", "documents": ["d"]}))
    assert r.status_code == 400 and r.headers["x-lkn-error-source"] == "lkn"
    assert gw.call(gw.manager.processes) == []
    tokens = http("POST", gw.base_url + "/tokenize",
                  json.dumps({"model": "chat", "content": "one two three"}))
    assert tokens.status_code == 200 and tokens.json() == {"tokens": [0, 1, 2]}
    missing = http("POST", gw.base_url + "/detokenize",
                   json.dumps({"model": "chat", "tokens": [1]}))  # the fake has no such route
    assert missing.status_code == 404 and missing.headers["x-lkn-error-source"] == "engine"
    assert gw.call(gw.manager.in_flight) == 0
