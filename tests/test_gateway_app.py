"""The gateway application without any engine process: pytest-aiohttp's ``aiohttp_client``
drives ``create_app(cfg)`` in the test's own loop. Everything answered before an engine is
needed: validation, routing, authentication, health, metrics, reload bookkeeping."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lkn.server import create_app, reload_config
from tests.conftest import write_config

LUA = """
server = { api_keys = { "k-1" }, log_dir = "logs" }
models = {
  { name = "fake", aliases = { "f" }, binary = "/nonexistent/engine", model_file = "/x.gguf",
    ctx_size = 4096 },
}
"""
AUTH = {"Authorization": "Bearer k-1"}


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Any) -> TestClient:
    app = create_app(write_config(tmp_path, LUA))
    c: TestClient = await aiohttp_client(app, headers=AUTH)
    return c


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "request body is not valid JSON"),
    (b"", 400, "request body is empty"),
    (b"[1, 2]", 400, "request body must be a JSON object, got list"),
    (b'{"messages": []}', 400, "'model' is required"),
    (b'{"model": "fake"}', 400, "'messages' is required"),
    (b'{"model": "fake", "messages": "hi"}', 400, "'messages' must be a non-empty array"),
    (b'{"model": "fake", "messages": [{"role": "robot", "content": "x"}]}', 400,
     "messages[0].role must be one of"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400,
     "'max_tokens' must be a positive integer, got 0"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
     400, "'temperature' must be a number"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400,
     "'stream' must be a boolean"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404,
     "The model 'nope' does not exist"),
])
async def test_bad_bodies_get_openai_errors_marked_as_lkn(client: TestClient, body: bytes,
                                                           status: int, message: str) -> None:
    r = await client.post("/v1/chat/completions", data=body,
                          headers={"Content-Type": "application/json"})
    assert r.status == status
    err = (await r.json())["error"]
    assert message in err["message"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["source"] == "lkn" and r.headers["x-lkn-error-source"] == "lkn"


async def test_health_is_open_and_reports_the_config_generation(tmp_path: Path,
                                                                aiohttp_client: Any) -> None:
    app = create_app(write_config(tmp_path, LUA))
    anonymous: TestClient = await aiohttp_client(app)
    health = await (await anonymous.get("/health")).json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["in_flight"] == 0
    assert health["config"]["generation"] == 1 and health["config"]["last_reload_error"] is None
    r = await anonymous.get("/v1/models")
    assert r.status == 401 and (await r.json())["error"]["source"] == "lkn"
    (tmp_path / "lkn.cfg.lua").write_text('models = { { name = "x", ctx_size = "big" } }')
    assert await reload_config(app) is False
    health = await (await anonymous.get("/health")).json()
    assert "models[1].ctx_size" in health["config"]["last_reload_error"]
    assert health["config"]["generation"] == 1


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/nothing-here", 404, "not_found"),
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("GET", "/v1/models/nope", 404, "model_not_found"),
])
async def test_unknown_routes_and_methods(client: TestClient, method: str, path: str,
                                          status: int, code: str) -> None:
    r = await client.request(method, path)
    assert r.status == status
    assert (await r.json())["error"]["code"] == code
