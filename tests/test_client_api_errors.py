"""Every API's bad requests, answered before an engine is needed, in that API's own error shape
with the right status and lkn's source marker, never a traceback: the gateway application
without engine processes (pytest-aiohttp's ``aiohttp_client``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lkn.gateway.server import create_app
from tests.conftest import write_config

LUA = """
server = { api_keys = { "k-1" }, admin_keys = { "a-1" }, log_dir = "logs" }
models = {
  { name = "fake", binary = "/nonexistent/engine", model_file = "/x.gguf", ctx_size = 4096 },
  { name = "remote", upstream = { url = "http://127.0.0.1:9/v1" } },
}
"""
USER = [{"role": "user", "content": "x"}]


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Any) -> TestClient:
    c: TestClient = await aiohttp_client(create_app(write_config(tmp_path, LUA)))
    return c


def anthropic_error(body: Any, kind: str) -> str:
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["error"]["source"] == "lkn" and body["request_id"]
    return str(body["error"]["message"])


def ollama_error(body: Any) -> str:
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def openai_error(body: Any) -> str:
    assert body["error"]["source"] == "lkn"
    return str(body["error"]["message"])


KEY = {"x-api-key": "k-1"}  # the Anthropic SDK's header; every API takes it


@pytest.mark.parametrize("path,body,status,shape,kind,message", [
    ("/v1/messages", b"{not json", 400, "anthropic", "invalid_request_error", "not valid JSON"),
    ("/v1/messages", {"model": "fake", "messages": USER}, 400, "anthropic",
     "invalid_request_error", "max_tokens"),
    ("/v1/messages", {"model": "fake", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "video"}]}]}, 400, "anthropic",
     "invalid_request_error", "video"),
    ("/v1/messages", {"model": "nope", "max_tokens": 8, "messages": USER}, 404, "anthropic",
     "not_found_error", "nope"),
    ("/v1/messages/count_tokens", {"model": "fake"}, 400, "anthropic",
     "invalid_request_error", "messages"),
    ("/v1/responses", {"model": "fake", "input": "hi", "tools": [{"type": "web_search"}]},
     400, "openai", "", "web_search"),
    ("/v1/responses", {"model": "fake", "input": "hi", "previous_response_id": "resp_x"},
     400, "openai", "", "resp_x"),
    ("/v1/responses", {"model": "fake", "input": 7}, 400, "openai", "", "input"),
    ("/api/chat", {"model": "fake", "messages": "hi"}, 400, "ollama", "", "messages"),
    ("/api/chat", {"model": "fake", "messages": USER, "keep_alive": "soon"}, 400, "ollama", "",
     "keep_alive"),
    # a long run of digits once backtracked for minutes on the event loop
    ("/api/chat", {"model": "fake", "messages": USER, "keep_alive": "1" * 200_000 + "x"}, 400,
     "ollama", "", "keep_alive"),
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "ollama", "", "nope"),
    ("/api/embed", {"model": "fake", "input": 3}, 400, "ollama", "", "input"),
    ("/api/show", {}, 400, "ollama", "", "model"),
    ("/api/nothing-here", {}, 404, "ollama", "", "no route"),
    ("/tokenize", {"model": "remote", "content": "x"}, 400, "openai", "", "llama-server"),
    ("/v1/rerank", {"model": "fake", "query": "q", "documents": ["d"]}, 400, "openai", "",
     "reranking = true"),
])
async def test_bad_requests_get_their_apis_error_shape(
        client: TestClient, path: str, body: Any, status: int, shape: str, kind: str,
        message: str) -> None:
    data = body if isinstance(body, bytes) else None
    r = await client.post(path, data=data, json=None if data else body,
                          headers={**KEY, "Content-Type": "application/json"})
    assert r.status == status, await r.text()
    assert r.headers["x-lkn-error-source"] == "lkn"
    payload = await r.json()
    said = (anthropic_error(payload, kind) if shape == "anthropic" else
            ollama_error(payload) if shape == "ollama" else openai_error(payload))
    assert message in said


@pytest.mark.parametrize("path,shape", [("/v1/messages", "anthropic"), ("/api/chat", "ollama"),
                                        ("/v1/responses", "openai")])
async def test_a_missing_key_is_a_401_in_the_apis_shape(client: TestClient, path: str,
                                                       shape: str) -> None:
    r = await client.post(path, json={"model": "fake"})
    assert r.status == 401
    payload = await r.json()
    if shape == "anthropic":
        assert "x-api-key" in anthropic_error(payload, "authentication_error")
    elif shape == "ollama":
        assert ollama_error(payload)
    else:
        assert openai_error(payload)


async def test_router_load_and_unload_take_the_admin_key(client: TestClient) -> None:
    r = await client.post("/models/unload", json={"model": "fake"}, headers=KEY)
    assert r.status == 401  # a client key is not an admin key
    r = await client.post("/models/unload", json={"model": "fake"},
                          headers={"Authorization": "Bearer a-1"})
    assert r.status == 200 and await r.json() == {"success": True}
    r = await client.post("/models/load", json={}, headers={"Authorization": "Bearer a-1"})
    assert r.status == 400


async def test_listings_for_every_client(client: TestClient) -> None:
    models = (await (await client.get("/v1/models", headers=KEY)).json())["data"]
    fake = next(m for m in models if m["id"] == "fake")
    assert fake["status"] == "unloaded" and fake["context_length"] == 4096
    assert fake["capabilities"] == ["completion", "tools"]
    router = (await (await client.get("/models", headers=KEY)).json())["data"]
    assert next(m for m in router if m["id"] == "fake")["status"] == {"value": "unloaded"}
    tags = (await (await client.get("/api/tags", headers=KEY)).json())["models"]
    assert {t["name"] for t in tags} == {"fake:latest", "remote:latest"}  # with the tag
    assert (await (await client.get("/api/ps", headers=KEY)).json()) == {"models": []}
    version = await (await client.get("/api/version", headers=KEY)).json()
    assert version["version"].count(".") == 2
    shown = await (await client.post("/api/show", json={"model": "fake:latest"},
                                     headers=KEY)).json()
    assert shown["capabilities"] == ["completion", "tools"]
    assert await (await client.get("/", headers=KEY)).text() == "Ollama is running"


async def test_only_the_operator_unloads_through_keep_alive_zero(
        client: TestClient, tmp_path: Path, aiohttp_client: Any) -> None:
    # Ollama's unload call stops the model for every client: the operator's, like
    # /models/unload (an admin key; anyone on a box without keys)
    r = await client.post("/api/generate", json={"model": "fake", "keep_alive": 0}, headers=KEY)
    assert r.status == 403 and "admin key" in ollama_error(await r.json())
    admin_only = LUA.replace('api_keys = { "k-1" }, ', "")
    open_box: TestClient = await aiohttp_client(create_app(write_config(tmp_path, admin_only,
                                                                        "admin.cfg.lua")))
    r = await open_box.post("/api/generate", json={"model": "fake", "keep_alive": 0})
    assert r.status == 403  # keys are set: a client without the admin key is no operator
    r = await open_box.post("/api/generate", json={"model": "fake", "keep_alive": 0},
                            headers={"Authorization": "Bearer a-1"})
    assert r.status == 200
    answer = await r.json()
    assert answer["done"] is True and answer["done_reason"] == "unload"
