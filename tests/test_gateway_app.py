"""The gateway application without any engine process: pytest-aiohttp's ``aiohttp_client``
drives ``create_app(cfg)`` in the test's own loop. Everything answered before an engine is
needed: validation, routing, authentication, health, metrics, reload bookkeeping."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lkn.gateway.keys import STATE
from lkn.gateway.reload import reload_config
from lkn.gateway.server import create_app
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
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "tools": 5}', 400,
     "'tools' must be an array"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"type": "function", "function": "f"}]}', 400,
     "tools[0].function must be an object with a 'name'"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], '
     b'"tool_choice": {"type": "function", "function": "f"}}', 400, "'tool_choice' must be"),
    (b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "metadata": '
     + b"[" * 200 + b"]" * 200 + b"}", 400, "nested too deeply"),
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
    assert health["config"]["generation"] == 1 and health["config"]["last_reload_failed"] is False
    r = await anonymous.get("/v1/models")
    assert r.status == 401 and (await r.json())["error"]["source"] == "lkn"
    (tmp_path / "lkn.cfg.lua").write_text('models = { { name = "x", ctx_size = "big" } }')
    assert await reload_config(app) is False
    health = await (await anonymous.get("/health")).json()
    # the open liveness answer says that it failed, not what the file held (it may be a key)
    assert health["config"]["last_reload_failed"] is True
    assert "ctx_size" not in json.dumps(health) and health["config"]["generation"] == 1
    status = await (await anonymous.get("/status")).json()  # loopback: open
    assert "models[1].ctx_size" in status["config"]["last_reload_error"]


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


async def test_metrics_keep_every_digit_and_escape_labels(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = client.app[STATE].metrics
    metrics.requests.inc('we"ird\\model', "chat", "200", "openai", "", amount=1234567)
    metrics.requests.inc('we"ird\\model', "chat", "200", "openai", "")
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(await r.text())
               for s in family.samples}
    key = ("lkn_requests_total",
           (("api", "openai"), ("key", ""), ("model", 'we"ird\\model'),
            ("route", "chat"), ("status", "200")))
    assert samples[key] == 1234568  # not 1.23457e+06: rate() keeps moving
    assert samples[("lkn_config_generation", ())] == 1
    assert samples[("lkn_queued", ())] == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


async def test_every_answer_carries_a_request_id(client: TestClient) -> None:
    r = await client.post("/v1/chat/completions", data=b"{not json",
                          headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert (await r.json())["error"]["request_id"] == "abc-123"
    made = await client.get("/v1/models", headers={"x-request-id": "bad id with spaces"})
    assert made.headers["x-request-id"].startswith("req-")
    other = await client.get("/v1/models")
    assert other.headers["x-request-id"] != made.headers["x-request-id"]


@pytest.mark.parametrize("remote, allowed", [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.5", False), ("192.168.1.2", False), ("::ffff:10.0.0.5", False), ("", False),
    ("fe80::1%eth0", False)])
async def test_without_admin_keys_the_admin_api_is_loopback_only(
        tmp_path: Path, remote: str, allowed: bool) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from lkn.errors import Forbidden
    from lkn.gateway.middleware import auth_middleware

    app = create_app(write_config(tmp_path, LUA))
    app[STATE] = type("S", (), {"cfg": write_config(tmp_path, LUA)})()  # only cfg is read
    request = make_mocked_request("POST", "/admin/reload", app=app).clone(remote=remote)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    if allowed:
        assert (await auth_middleware(request, ok)).status == 200
    else:
        with pytest.raises(Forbidden):
            await auth_middleware(request, ok)


async def test_cors_preflight_and_exposed_headers(tmp_path: Path, aiohttp_client: Any) -> None:
    lua = LUA.replace('log_dir = "logs"', 'log_dir = "logs", cors_origins = { "https://app.example" }')
    c = await aiohttp_client(create_app(write_config(tmp_path, lua)))
    pre = await c.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    other = await c.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status == 403
    r = await c.get("/v1/models", headers={**AUTH, "Origin": "https://app.example"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "x-request-id" in r.headers["Access-Control-Expose-Headers"].lower()
    admin = await c.options("/admin/reload", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in admin.headers  # never the admin API


async def test_no_cors_headers_without_configured_origins(client: TestClient) -> None:
    r = await client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("remote, token, status", [
    ("127.0.0.1", "", 200), ("10.0.0.5", "", 403), ("10.0.0.5", "k-1", 403)])
async def test_status_without_admin_keys_is_open_on_loopback_only(
        tmp_path: Path, remote: str, token: str, status: int) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from lkn.errors import Forbidden
    from lkn.gateway.middleware import auth_middleware

    app = create_app(write_config(tmp_path, LUA))
    app[STATE] = type("S", (), {"cfg": write_config(tmp_path, LUA)})()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = make_mocked_request("GET", "/status", headers=headers, app=app).clone(
        remote=remote)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    if status == 200:
        assert (await auth_middleware(request, ok)).status == 200
    else:  # an API key is no admin key: /status shows engine log tails
        with pytest.raises(Forbidden):
            await auth_middleware(request, ok)
