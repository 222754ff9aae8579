"""The gateway's trust boundary, tried as an attacker and a careless neighbour would (issue
#20): loopback through a proxy, other sites' pages and foreign host names, metrics and model
health without a key, stalled and oversized uploads, a flood of requests, and signals during
the drain. Each test fails without its fix."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lkn.gateway.server import create_app
from lkn.request.trust import Client, client_of, host_allowed, same_site
from tests.conftest import Gateway, free_port, http, lkn_daemon, lua_str, write_config

LUA = """
server = {{ log_dir = "logs", {server} }}
models = {{
  {{ name = "fake", binary = "/nonexistent/engine", model_file = "/x.gguf", ctx_size = 4096 }},
}}
"""
CHAT = b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'  # a 404 once let in
JSON = {"Content-Type": "application/json"}


async def app_client(tmp_path: Path, aiohttp_client: Any, server: str = "") -> TestClient:
    c: TestClient = await aiohttp_client(create_app(write_config(tmp_path, LUA.format(
        server=server))))
    return c


# --- who is local --------------------------------------------------------------------------

U = False  # came through a proxy: never the operator


@pytest.mark.parametrize("peer, headers, trusted, client", [
    ("127.0.0.1", {}, (), Client("127.0.0.1")),
    ("127.0.0.1", {"X-Forwarded-For": "8.8.8.8"}, (), Client("127.0.0.1", U)),
    ("127.0.0.1", {"Forwarded": "for=8.8.8.8"}, (), Client("127.0.0.1", U)),
    ("127.0.0.1", {"X-Real-IP": "8.8.8.8"}, (), Client("127.0.0.1", U)),
    ("127.0.0.1", {"Via": "1.1 nginx"}, (), Client("127.0.0.1", U)),
    # a trusted proxy names the client; spoofed entries left of it are not believed
    ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1, 8.8.8.8"}, ("127.0.0.1/32",),
     Client("8.8.8.8", U)),
    ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, ("127.0.0.1/32",), Client("127.0.0.1", U)),
    ("127.0.0.1", {"Forwarded": 'for="[2001:db8::1]:443";proto=https'}, ("127.0.0.0/8",),
     Client("2001:db8::1", U)),
    ("127.0.0.1", {"Via": "1.1 nginx"}, ("127.0.0.1/32",), Client("127.0.0.1", U)),
    # a trusted proxy that names nobody (a plain proxy_pass) is not the operator either
    ("127.0.0.1", {}, ("127.0.0.1/32",), Client("127.0.0.1", U)),
    # a proxy not in the list: its headers name nobody
    ("10.0.0.9", {"X-Forwarded-For": "127.0.0.1"}, ("10.0.0.1/32",), Client("10.0.0.9", U)),
    ("::ffff:127.0.0.1", {}, (), Client("::ffff:127.0.0.1")),
])
def test_who_the_client_is(peer: str, headers: dict[str, str], trusted: tuple[str, ...],
                           client: Client) -> None:
    assert client_of(peer, headers, trusted) == client


def test_a_proxy_appending_its_own_header_line_is_read_whole() -> None:
    """HAProxy's ``option forwardfor`` adds a line after the client's own: the client's
    "127.0.0.1" must not pass for the proxy's word."""
    from multidict import CIMultiDict
    headers = CIMultiDict([("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "8.8.8.8")])
    assert client_of("127.0.0.1", headers, ("127.0.0.1/32",)) == Client("8.8.8.8", U)


def test_loopback_is_local_only_without_a_proxy_between() -> None:
    assert Client("::ffff:127.0.0.1").local and Client("::1").local
    assert not Client("127.0.0.1", U).local and not Client("10.0.0.1").local


@pytest.mark.parametrize("header", ["Forwarded", "X-Forwarded-For", "X-Real-IP", "Via"])
async def test_a_same_host_proxy_does_not_make_the_internet_admin(
        tmp_path: Path, aiohttp_client: Any, header: str) -> None:
    c = await app_client(tmp_path, aiohttp_client)
    value = "1.1 nginx" if header == "Via" else "for=203.0.113.9" if header == "Forwarded" \
        else "203.0.113.9"
    assert (await c.get("/status")).status == 200  # direct loopback: the operator
    r = await c.get("/status", headers={header: value})
    assert r.status == 403 and "proxy" in (await r.json())["error"]["message"]
    assert (await c.post("/admin/reload", headers={header: value})).status == 403


async def test_nothing_through_a_trusted_proxy_is_the_operator(
        tmp_path: Path, aiohttp_client: Any) -> None:
    c = await app_client(tmp_path, aiohttp_client, 'trusted_proxies = { "127.0.0.1" }')
    for headers in ({"X-Forwarded-For": "127.0.0.1"}, {"X-Forwarded-For": "203.0.113.9"}, {}):
        assert (await c.get("/status", headers=headers)).status == 403, headers


# --- browsers: other sites, DNS rebinding, simple POSTs ------------------------------------

@pytest.mark.parametrize("host, names, admin, allowed", [
    ("gpu7.lan:8080", frozenset({"*.lan"}), False, True),
    ("gpu7.lan.evil.example", frozenset({"*.lan"}), False, False),
    ("127.0.0.1:8080", frozenset(), False, True),
    ("[::1]:8080", frozenset(), True, True),
    ("localhost:8080", frozenset(), True, True),
    ("192.168.1.5:8080", frozenset(), False, True),     # an address: no rebinding
    ("192.168.1.5:8080", frozenset(), True, False),     # the admin API: loopback only
    ("gpubox:8080", frozenset({"gpubox"}), False, True),
    ("evil.example:8080", frozenset({"gpubox"}), False, False),
    ("evil.example", frozenset(), True, False),
])
def test_host_names_of_this_box(host: str, names: frozenset[str], admin: bool,
                                allowed: bool) -> None:
    assert host_allowed(host, names, loopback_only=admin) is allowed


@pytest.mark.parametrize("origin, fetch_site, cors, ok", [
    (None, None, (), True),
    ("http://127.0.0.1:8080", "same-origin", (), True),
    (None, "none", (), True),
    ("https://evil.example", None, (), False),
    ("null", None, (), False),
    (None, "cross-site", (), False),
    (None, "same-site", (), False),
    ("https://app.example", "cross-site", ("https://app.example",), True),
    ("https://evil.example", "cross-site", ("https://app.example",), False),
])
def test_same_site(origin: str | None, fetch_site: str | None, cors: tuple[str, ...],
                   ok: bool) -> None:
    assert same_site("127.0.0.1:8080", origin, fetch_site, cors) is ok


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/status", "/metrics",
                                  "/health/fake"])
@pytest.mark.parametrize("headers", [{"Host": "rebound.evil.example"},
                                     {"Origin": "https://evil.example"},
                                     {"Sec-Fetch-Site": "cross-site"}])
async def test_without_keys_every_route_refuses_other_sites(
        tmp_path: Path, aiohttp_client: Any, path: str, headers: dict[str, str]) -> None:
    c = await app_client(tmp_path, aiohttp_client)
    post = path.startswith("/v1/chat")
    r = await (c.post(path, data=CHAT, headers={**JSON, **headers}) if post
               else c.get(path, headers=headers))
    assert r.status == 403, path
    assert (await r.json())["error"]["source"] == "lkn"
    ok = await (c.post(path, data=CHAT, headers=JSON) if post else c.get(path))
    assert ok.status in (200, 404), path  # let in: the model does not exist


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
async def test_without_keys_a_json_route_takes_only_json(
        tmp_path: Path, aiohttp_client: Any, content_type: str) -> None:
    c = await app_client(tmp_path, aiohttp_client)
    headers = {"Content-Type": content_type} if content_type else {}
    r = await c.post("/v1/chat/completions", data=CHAT, headers=headers,
                     skip_auto_headers=["Content-Type"])
    assert r.status == 415 and (await r.json())["error"]["code"] == "unsupported_media_type"
    r = await c.post("/v1/chat/completions", data=CHAT,
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 404


@pytest.mark.parametrize("public", [False, True])
async def test_metrics_and_model_health_follow_the_keys(
        tmp_path: Path, aiohttp_client: Any, public: bool) -> None:
    c = await app_client(tmp_path, aiohttp_client, 'api_keys = { "k-1" }, '
                         f'metrics_public = {"true" if public else "false"}')
    assert (await c.get("/metrics")).status == (200 if public else 401)
    assert (await c.get("/health/fake")).status == 401
    key = {"Authorization": "Bearer k-1"}
    assert (await c.get("/metrics", headers=key)).status == 200
    assert (await c.get("/health/fake", headers=key)).status == 200
    assert (await c.get("/health")).status == 200 and (await c.get("/ready")).status in (200, 503)


# --- uploads and floods --------------------------------------------------------------------

async def test_a_body_over_max_body_mb_is_a_413(tmp_path: Path, aiohttp_client: Any) -> None:
    c = await app_client(tmp_path, aiohttp_client, "max_body_mb = 0.01")
    big = b'{"model": "fake", "messages": [{"role": "user", "content": "' + b"x" * 20_000 + b'"}]}'
    r = await c.post("/v1/chat/completions", data=big, headers=JSON)
    assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"

    async def chunked() -> Any:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]
    r = await c.post("/v1/chat/completions", data=chunked(), headers=JSON)
    assert r.status == 413


def test_the_default_body_limit_is_well_below_64_mib() -> None:
    from lkn.config import ServerConfig
    assert ServerConfig().max_body_mb <= 16


@pytest.fixture
def gateway(tmp_path: Path, gateway_factory: Any) -> Any:
    def make(server: str) -> Gateway:
        return gateway_factory(write_config(tmp_path, LUA.format(server=server)))
    return make


def raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)  # lkn's answer and close come sooner: its deadline plus LINGER_S
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_stalled_body_gets_a_408_and_its_connection_closed(gateway: Any) -> None:
    gw = gateway("body_timeout_s = 0.5")
    sock = raw(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mo")
    with sock:
        answer = read_all(sock)  # read until lkn closes: it does, after the deadline
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout_s" in answer


def test_stalled_headers_are_dropped_at_the_deadline(gateway: Any) -> None:
    gw = gateway("body_timeout_s = 0.5")
    with raw(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow") as s:
        assert read_all(s) == b""  # closed, nothing answered


def test_requests_beyond_max_in_flight_get_a_503_with_retry_after(gateway: Any) -> None:
    gw = gateway("max_in_flight = 2, body_timeout_s = 30")
    stalled = [raw(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while _in_flight(gw) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = http("POST", gw.base_url + "/v1/chat/completions", CHAT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert http("GET", gw.base_url + "/health").status_code == 200  # never turned away
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 10
    while _in_flight(gw) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http("POST", gw.base_url + "/v1/chat/completions", CHAT).status_code == 404


def _in_flight(gw: Gateway) -> int:
    from lkn.gateway.keys import INTAKE
    return int(gw.call(lambda: gw.app[INTAKE].in_flight))


# --- signals during the drain --------------------------------------------------------------

@pytest.fixture
def daemon_config(tmp_path: Path, fake_binary: str) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / "lkn.cfg.lua"
    cfg.write_text(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = {lua_str(str(tmp_path / 'logs'))},
           shutdown_drain_s = 60, stop_grace_s = 2 }}
models = {{ {{ name = "a", binary = {lua_str(fake_binary)}, model_file = "/x.gguf",
              ctx_size = 512, vram_mb = 10, args = {{ "--fake-token-delay-s", "0.1", "--fake-tokens", "1000" }} }} }}
""")
    return cfg, port


def _stream_in_background(client: Any, tokens: int) -> tuple[threading.Thread, dict[str, Any]]:
    got: dict[str, Any] = {"chunks": 0, "error": None, "started": threading.Event()}

    def run() -> None:
        try:
            for _ in client.chat.completions.create(
                    model="a", stream=True, max_tokens=tokens,
                    messages=[{"role": "user", "content": "hi"}]):
                got["chunks"] += 1
                got["started"].set()
        except Exception as exc:  # the cut stream, when the drain is cut
            got["error"] = exc
        got["started"].set()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert got["started"].wait(30)
    return thread, got


def test_sighup_during_the_drain_is_ignored(daemon_config: tuple[Path, int]) -> None:
    cfg, port = daemon_config
    with lkn_daemon(cfg, port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as (lkn, c):
        thread, got = _stream_in_background(c, 30)  # ~3 s of tokens
        lkn.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        for _ in range(3):
            lkn.send_signal(signal.SIGHUP)  # Python's default for SIGHUP: die at once
            time.sleep(0.1)
        thread.join(60)
        assert got["error"] is None and got["chunks"] >= 30  # the stream was drained whole
        assert lkn.wait(60) == 0
        assert b"SIGHUP while shutting down: ignored" in lkn.stderr.read()


def test_a_second_sigterm_shortens_the_drain(daemon_config: tuple[Path, int]) -> None:
    cfg, port = daemon_config
    with lkn_daemon(cfg, port, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as (lkn, c):
        thread, got = _stream_in_background(c, 400)  # 40 s of tokens: longer than we wait
        lkn.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert lkn.poll() is None  # draining
        lkn.send_signal(signal.SIGINT)  # Python's default for SIGINT: KeyboardInterrupt
        assert lkn.wait(30) == 0
        thread.join(30)
        assert got["chunks"] < 400
        err = lkn.stderr.read()
        assert b"Traceback" not in err and b"drain cut short" in err


async def test_a_reloaded_body_limit_applies_at_once(tmp_path: Path, aiohttp_client: Any) -> None:
    from dataclasses import replace

    from lkn.gateway.keys import STATE
    c = await app_client(tmp_path, aiohttp_client, "max_body_mb = 0.01")
    state = c.app[STATE]
    big = b'{"model": "nope", "messages": [{"role": "user", "content": "' + b"x" * 20_000 + b'"}]}'

    async def chunked() -> Any:
        yield big
    state.cfg = replace(state.cfg, server=replace(state.cfg.server, max_body_mb=1.0))
    assert (await c.post("/v1/chat/completions", data=chunked(), headers=JSON)).status == 404
    state.cfg = replace(state.cfg, server=replace(state.cfg.server, max_body_mb=0.005))
    assert (await c.post("/v1/chat/completions", data=chunked(), headers=JSON)).status == 413


async def test_allowed_hosts_name_this_box(tmp_path: Path, aiohttp_client: Any) -> None:
    c = await app_client(tmp_path, aiohttp_client, 'allowed_hosts = { "GPUBOX.lan" }')
    assert (await c.get("/v1/models", headers={"Host": "gpubox.lan:8080"})).status == 200
    r = await c.get("/v1/models", headers={"Host": "other.lan:8080"})
    assert r.status == 403 and "allowed_hosts" in (await r.json())["error"]["message"]


def test_the_operators_routes_are_never_turned_away(gateway: Any) -> None:
    gw = gateway("max_in_flight = 1, body_timeout_s = 30")
    stalled = raw(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    with stalled:
        deadline = time.monotonic() + 10
        while _in_flight(gw) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http("POST", gw.base_url + "/v1/chat/completions", CHAT).status_code == 503
        assert http("GET", gw.base_url + "/status").status_code == 200


@pytest.mark.parametrize("resolved, refused", [
    (["169.254.169.254"], True), (["10.0.0.5", "fe80::1"], True), (["10.0.0.5"], False)])
async def test_a_runtime_name_that_resolves_to_metadata_is_refused(
        monkeypatch: pytest.MonkeyPatch, resolved: list[str], refused: bool) -> None:
    """``*.lan`` may allow a name; what it resolves to (nip.io-style) is checked as well."""
    import socket as so

    from lkn.gateway.admin_actions import _resolves_to_blocked

    async def getaddrinfo(self: Any, host: str, port: Any, **_: Any) -> list[Any]:
        assert host == "gpu1.lan"
        return [(so.AF_INET6 if ":" in a else so.AF_INET, so.SOCK_STREAM, 6, "", (a, 0))
                for a in resolved]
    monkeypatch.setattr(asyncio.get_running_loop().__class__, "getaddrinfo", getaddrinfo)
    entry = {"id": "g", "upstream": {"url": "http://gpu1.lan:8080/v1"}}
    assert (await _resolves_to_blocked(entry) == "gpu1.lan") is refused
    assert await _resolves_to_blocked({"id": "g", "upstream": {"url": "http://10.0.0.1/v1"}}) \
        is None  # an address is judged as written, by the allow-list
