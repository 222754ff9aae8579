"""Issue 20, items 1 and 6 and the URLs in errors: runtime backends held to the trust boundary
(``server.runtime_upstreams``, the file's own ``api_key_env``s, never a metadata address), the
response cache partitioned per key with fresh ids and nothing stored that a probe did not gate,
userinfo never shown, and an upstream's redirect never followed. Each test fails without its
fix."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from lkn.cache.store import partition_of
from lkn.config.upstreams import redact_url, upstream_allowed
from tests.conftest import Gateway, free_port, http, lua_str, write_config

FILE_KEY_ENV = "LKN_ABUSE_FILE_KEY"
OTHER_ENV = "LKN_ABUSE_OTHER_SECRET"
OTHER_SECRET = "sk-other-secret-must-not-leave"
MSG = [{"role": "user", "content": "hello there"}]


# ------------------------------------------------------------------ the pure decider

FILE_HOSTS = {"10.1.2.3", "api.example.com"}


@pytest.mark.parametrize("url, allow, admin, refused", [
    # runtime registration off: no patterns, no admin keys
    ("http://10.1.2.3/v1", (), False, "runtime backends are off"),
    # no patterns, admin keys: only the file's hosts
    ("http://10.1.2.3:9999/v1", (), True, None),
    ("http://API.Example.com/v1", (), True, None),
    ("http://10.1.2.4/v1", (), True, "only use a host the config file"),
    # CIDRs for IP literals, globs for names, never across
    ("http://10.9.9.9/v1", ("10.0.0.0/8",), False, None),
    ("http://11.0.0.1/v1", ("10.0.0.0/8",), False, "not in server.runtime_upstreams"),
    ("http://gpu3.lan:8000/v1", ("gpu*.lan",), False, None),
    ("http://GPU3.LAN./v1", ("gpu*.lan",), False, None),
    ("http://gpu3.lan.evil.com/v1", ("gpu*.lan",), False, "not in server.runtime_upstreams"),
    ("http://10.0.0.1/v1", ("10.*",), False, "not in server.runtime_upstreams"),
    ("http://[2001:db8::5]/v1", ("2001:db8::/32",), False, None),
    ("http://[::ffff:10.0.0.1]/v1", ("10.0.0.0/8",), False, None),
    # metadata and link-local: refused whatever the patterns say
    ("http://169.254.169.254/latest", ("0.0.0.0/0", "*"), False, "metadata"),
    ("http://2852039166/latest", ("0.0.0.0/0", "*"), False, "metadata"),  # 169.254.169.254
    ("http://0xa9.0xfe.0xa9.0xfe/", ("0.0.0.0/0", "*"), False, "metadata"),
    ("http://[::ffff:169.254.169.254]/", ("0.0.0.0/0", "::/0", "*"), False, "metadata"),
    ("http://[fe80::1]/v1", ("::/0", "*"), False, "metadata"),
    ("http://100.100.100.200/", ("0.0.0.0/0",), False, "metadata"),
    ("http://[fd00:ec2::254]/", ("::/0",), False, "metadata"),
    ("http://metadata.google.internal/", ("*",), False, "metadata"),
    ("http://Metadata./", ("*",), False, "metadata"),
    ("http://169.254.169.254/", (), True, "metadata"),
    # keys go through api_key_env, never a URL
    ("http://user:pw@gpu1.lan/v1", ("gpu*.lan",), False, "user or password"),
    ("ftp://gpu1.lan/v1", ("gpu*.lan",), False, "http://"),
    ("http:///v1", ("*",), False, "no host"),
])
def test_upstream_allowed_table(url: str, allow: tuple[str, ...], admin: bool,
                                refused: str | None) -> None:
    reason = upstream_allowed(url, allow, FILE_HOSTS, admin)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason
        assert "pw@" not in reason


@pytest.mark.parametrize("text, shown", [
    ("http://user:pass@host:8/v1", "http://***@host:8/v1"),
    ("https://tok@h/v1/x?a=b@c", "https://***@h/v1/x?a=b@c"),
    ("upstream http://u:p@a/v1 and https://v:q@b/v1 down", "upstream http://***@a/v1 and "
                                                           "https://***@b/v1 down"),
    ("http://host/v1", "http://host/v1"),
    ("no url here, a@b", "no url here, a@b"),
])
def test_redact_url_table(text: str, shown: str) -> None:
    assert redact_url(text) == shown


# ------------------------------------------------------------------ a recording upstream

class Recorder:
    """A tiny OpenAI-compatible server that records every request it gets (and its
    Authorization header)."""

    def __init__(self) -> None:
        hits = self.hits = []  # type: list[tuple[str, str, str]]

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict[str, Any]) -> None:
                hits.append((self.command, self.path, self.headers.get("Authorization", "")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                self._answer({"object": "list", "data": []})

            def do_POST(self) -> None:  # noqa: N802
                self._answer({"id": "chatcmpl-rec", "object": "chat.completion", "created": 1,
                              "model": "m", "choices": [{
                                  "index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "ok"}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                        "total_tokens": 2}})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Redirector:
    """An upstream that answers 302 to the same path on ``target`` for ``method`` (GET: its
    health check, POST: a chat request) and 200 to anything else."""

    def __init__(self, target: str, method: str) -> None:
        hits = self.hits = []  # type: list[tuple[str, str]]

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                hits.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                raw = json.dumps({"object": "list", "data": []}).encode()
                if self.command == method:
                    self.send_response(302)
                    self.send_header("Location", target + self.path.removeprefix("/v1"))
                    raw = b""
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders() -> Iterator[Any]:
    made: list[Recorder] = []

    def make() -> Recorder:
        made.append(Recorder())
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture
def backends_gw(tmp_path: Path, gateway_factory: Any, recorders: Any,
                monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(FILE_KEY_ENV, "sk-file-key")
    monkeypatch.setenv(OTHER_ENV, OTHER_SECRET)

    def make(server: str = "") -> tuple[Gateway, Recorder]:
        home = recorders()
        gw = gateway_factory(write_config(tmp_path, backends_lua(tmp_path, home.url, server)))
        return gw, home
    return make


def backends_lua(tmp_path: Path, home_url: str, server: str) -> str:
    return f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))}, {server} }}
models = {{ {{ name = "chat", balance = "round_robin", backends = {{
  {{ id = "file", upstream = {{ url = {lua_str(home_url)}, api_key_env = "{FILE_KEY_ENV}" }} }},
}} }} }}
"""


def add(gw: Gateway, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return http("POST", gw.base_url + "/admin/models/chat/backends", json.dumps(body), headers)


def chat(gw: Gateway, n: int, key: str | None = None) -> None:
    for _ in range(n):
        gw.client(**({"api_key": key} if key else {})).chat.completions.create(
            model="chat", messages=MSG)


# ------------------------------------------------------------------ runtime backends

def test_runtime_backend_with_a_foreign_api_key_env_is_a_400_and_gets_no_key(
        backends_gw: Any, recorders: Any) -> None:
    gw, _ = backends_gw('runtime_upstreams = { "127.0.0.1/32" }')
    target = recorders()
    r = add(gw, {"id": "evil", "upstream": {"url": target.url, "api_key_env": OTHER_ENV}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "backend.upstream.api_key_env" and error["source"] == "lkn"
    chat(gw, 3)
    assert not any(OTHER_SECRET in auth for _, _, auth in target.hits)
    assert target.hits == []
    # the file's own key for that model is allowed
    r = add(gw, {"id": "good", "upstream": {"url": target.url, "api_key_env": FILE_KEY_ENV}})
    assert r.status_code == 201, r.text


def test_runtime_backend_outside_runtime_upstreams_is_refused_and_never_called(
        backends_gw: Any, recorders: Any) -> None:
    gw, _ = backends_gw('runtime_upstreams = { "10.0.0.0/8", "gpu*.lan" }')
    target = recorders()
    r = add(gw, {"id": "outside", "upstream": {"url": target.url}})
    assert r.status_code == 403, r.text
    assert "runtime_upstreams" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "backend.upstream.url"
    chat(gw, 4)
    assert target.hits == []
    listed = http("GET", gw.base_url + "/status").json()["models"]["chat"]["backends"]
    assert [b["backend"] for b in listed] == ["chat/file"]


def test_a_reload_that_narrows_runtime_upstreams_drops_the_backends_it_no_longer_allows(
        tmp_path: Path, backends_gw: Any, recorders: Any) -> None:
    gw, home = backends_gw('runtime_upstreams = { "127.0.0.1" }')
    target = recorders()
    assert add(gw, {"id": "extra", "upstream": {"url": target.url}}).status_code == 201
    narrower = 'runtime_upstreams = { "10.0.0.0/8" }'
    write_config(tmp_path, backends_lua(tmp_path, home.url, narrower))
    assert http("POST", gw.base_url + "/admin/reload").status_code == 200
    listed = http("GET", gw.base_url + "/status").json()["models"]["chat"]["backends"]
    assert [b["backend"] for b in listed] == ["chat/file"]


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://2852039166/latest",
    "http://[fe80::1]:80/v1", "http://metadata.google.internal/computeMetadata/v1",
    "http://metadata/v1", "http://100.100.100.200/latest"])
def test_metadata_and_link_local_are_refused_even_when_patterns_allow_all(
        backends_gw: Any, url: str) -> None:
    gw, _ = backends_gw('runtime_upstreams = { "0.0.0.0/0", "::/0", "*" }')
    r = add(gw, {"id": "meta", "upstream": {"url": url}})
    assert r.status_code == 403, r.text
    assert "metadata" in r.json()["error"]["message"]


def test_empty_allow_list_without_admin_keys_refuses_runtime_backends(
        backends_gw: Any) -> None:
    gw, home = backends_gw()
    r = add(gw, {"id": "same-host", "upstream": {"url": home.url}})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert "server.runtime_upstreams" in r.json()["error"]["message"]


def test_with_admin_keys_and_no_allow_list_only_the_files_hosts(backends_gw: Any,
                                                                 recorders: Any) -> None:
    gw, _ = backends_gw('admin_keys = { "adm-1" }')
    target = recorders()  # the same host as the file's upstream, another port
    other_host = target.url.replace("127.0.0.1", "localhost")
    r = add(gw, {"id": "elsewhere", "upstream": {"url": other_host}}, key="adm-1")
    assert r.status_code == 403, r.text
    r = add(gw, {"id": "same-host", "upstream": {"url": target.url}}, key="adm-1")
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("bad_id", ["a b", "../x", "", "x" * 65, "é", 7])
def test_runtime_backend_ids_are_checked_like_names(backends_gw: Any, bad_id: Any) -> None:
    gw, home = backends_gw('runtime_upstreams = { "127.0.0.1" }')
    r = add(gw, {"id": bad_id, "upstream": {"url": home.url}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "backend.id"


def test_runtime_backend_url_with_userinfo_is_refused_without_echoing_it(
        backends_gw: Any, recorders: Any) -> None:
    gw, _ = backends_gw('runtime_upstreams = { "127.0.0.1" }')
    target = recorders()
    url = target.url.replace("http://", "http://me:hunter2@")
    r = add(gw, {"id": "creds", "upstream": {"url": url}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "backend.upstream.url"
    assert "hunter2" not in r.text
    chat(gw, 2)
    assert target.hits == []


@pytest.mark.parametrize("method", ["GET", "POST"])  # its health check, a chat request
def test_an_upstream_redirect_is_never_followed(tmp_path: Path, gateway_factory: Any,
                                               recorders: Any, method: str) -> None:
    target = recorders()  # where a hostile upstream points lkn (a metadata address, say)
    redirector = Redirector(target.url, method)
    try:
        gw = gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "up", upstream = {{ url = {lua_str(redirector.url)} }} }} }}
"""))
        r = http("POST", gw.base_url + "/v1/chat/completions",
                 json.dumps({"model": "up", "messages": MSG}))
        assert r.status_code in (502, 503), r.text  # lkn's error, never the redirect
        assert r.json()["error"]["source"] == "lkn"
        assert "location" not in {k.lower() for k in r.headers}
        assert (method, "/v1/models" if method == "GET" else "/v1/chat/completions") \
            in redirector.hits
        assert target.hits == []
    finally:
        redirector.close()


# ------------------------------------------------------------------ URLs in errors

def test_userinfo_of_an_upstream_url_never_reaches_a_client_or_status(
        tmp_path: Path, gateway_factory: Any) -> None:
    dead = f"http://lkn-user:s3cret-pw@127.0.0.1:{free_port()}/v1"
    gw = gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "remote", upstream = {{ url = {lua_str(dead)} }} }},
            {{ name = "pool", backends = {{ {{ id = "a", upstream = {{ url = {lua_str(dead)} }} }},
                                            {{ id = "b", upstream = {{ url = {lua_str(dead)} }} }}
            }} }} }}
"""))
    for model in ("remote", "pool"):
        r = http("POST", gw.base_url + "/v1/chat/completions",
                 json.dumps({"model": model, "messages": MSG}))
        assert r.status_code >= 500, r.text
        assert r.json()["error"]["source"] == "lkn"
        assert "s3cret-pw" not in r.text and "lkn-user" not in r.text, r.text
    status = http("GET", gw.base_url + "/status")
    assert status.status_code == 200
    assert "s3cret-pw" not in status.text and "127.0.0.1" in status.text


# ------------------------------------------------------------------ the cache

def cache_lua(binary: str, capture: Path, *, server: str = "", homeostasis: str = "",
              args: str = "") -> str:
    return f"""
server = {{ stop_grace_s = 1, {server} }}
models = {{
  {{ name = "fake", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))}, {args} }},
    cache = {{ enabled = true, ttl_s = 600, max_mb = 4 }}, {homeostasis} }},
  {{ name = "large", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 4096 }},
}}
"""


def answers(capture: Path) -> list[dict[str, Any]]:
    lines = capture.read_text().splitlines() if capture.exists() else []
    return [b for b in map(json.loads, lines) if b.get("max_tokens") != 1]


def test_the_cache_is_partitioned_per_key_and_a_hit_gets_a_fresh_id(
        tmp_path: Path, fake_binary: str, capture: Path, gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, cache_lua(
        fake_binary, capture, server='api_keys = { "key-a", "key-b" }')))
    a, b = gw.client(api_key="key-a"), gw.client(api_key="key-b")
    first = a.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                         temperature=0)
    other = b.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                         temperature=0)
    assert first.headers["x-lkn-cache"] == "miss"
    assert other.headers["x-lkn-cache"] == "miss" and "age" not in other.headers
    assert len(answers(capture)) == 2  # B's answer came from the engine, not from A's
    again = a.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                         temperature=0)
    assert again.headers["x-lkn-cache"] == "hit"
    assert again.parse().id != first.parse().id
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    with a.chat.completions.with_streaming_response.create(
            model="fake", messages=MSG, temperature=0, stream=True) as resp:
        assert resp.headers["x-lkn-cache"] == "hit"
        ids = {c.id for c in resp.parse()}
    assert len(ids) == 1 and first.parse().id not in ids and again.parse().id not in ids
    assert len(answers(capture)) == 2


def test_nothing_is_stored_when_the_probe_timed_out(tmp_path: Path, fake_binary: str,
                                                     capture: Path,
                                                     gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, cache_lua(
        fake_binary, capture, args='"--fake-probe-delay-s", 3',
        homeostasis='homeostasis = { mode = "homeostatic", probe_timeout_s = 0.2, '
                    'intervention = "verify_prompt" },')))
    client = gw.client()
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=0)
        assert r.headers["x-lkn-mode"] == "PASSTHROUGH" and r.headers["x-lkn-cache"] == "miss"
    assert len(answers(capture)) == 2


def test_nothing_is_stored_when_the_request_escalated(tmp_path: Path, fake_binary: str,
                                                       capture: Path,
                                                       gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, cache_lua(
        fake_binary, capture, args='"--fake-entropy", "high"',
        homeostasis='homeostasis = { mode = "homeostatic", threshold = 0.5, '
                    'intervention = "escalate", escalate_to = "large" },')))
    client = gw.client()
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="fake", messages=MSG,
                                                             temperature=0)
        assert r.headers["x-lkn-escalated-from"] == "fake"
        assert r.headers["x-lkn-cache"] == "miss"


@pytest.mark.parametrize("key, value", [("tokenizer_path", "/etc/shadow"),
                                        ("env", {"LD_PRELOAD": "/tmp/x.so"}),
                                        ("binary", "/bin/sh")])
def test_runtime_backends_set_no_local_paths_or_environment(backends_gw: Any, key: str,
                                                            value: Any) -> None:
    gw, home = backends_gw('runtime_upstreams = { "127.0.0.1" }')
    r = add(gw, {"id": "x", "upstream": {"url": home.url}, key: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == f"backend.{key}"


@pytest.mark.parametrize("caller, partition", [
    ("key-0123456789ab", "key-0123456789ab"), ("ip-127.0.0.1", "anonymous"),
    ("key:alice", "anonymous"),
    ("ip-10.0.0.7", "anonymous"), ("", "anonymous")])
def test_cache_partition_of_a_caller(caller: str, partition: str) -> None:
    assert partition_of(caller) == partition
