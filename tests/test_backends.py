"""One model over several backends (issue 11, items 3-5): balancing, circuit breakers and
retries before the first byte. Backends are fake OpenAI servers in child processes and the fake
llama-server; the client is the openai SDK."""
from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, http, lua_str, write_config
from tests.test_upstream import MSG

KEY_ENV = "LKN_TEST_UPSTREAM_KEY"


@pytest.fixture
def make_gw(tmp_path: Path, gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(KEY_ENV, "sk-test-0123456789abcdef")

    def make(backends: list[str], extra: str = "", server: str = "") -> Gateway:
        entries = ",\n".join(backends)
        return gateway_factory(write_config(tmp_path, f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, {server}
           log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "chat", {extra}
              backends = {{ {entries} }} }} }}
"""))
    return make


def remote(url: str, extra: str = "") -> str:
    return (f'{{ upstream = {{ url = {lua_str(url)}, api_key_env = "{KEY_ENV}", '
            f'model = "remote-model" }}, {extra} }}')


def served(capture: Path) -> int:
    return len(capture.read_text().splitlines()) if capture.exists() else 0


def test_round_robin_spreads_requests_and_names_the_backend(upstream: Any,
                                                             make_gw: Any) -> None:
    (u1, c1), (u2, c2) = upstream(), upstream()
    gw = make_gw([remote(u1, 'id = "one"'), remote(u2, 'id = "two"')],
                 'balance = "round_robin",')
    client = gw.client()
    backends = [client.chat.completions.with_raw_response.create(
        model="chat", messages=MSG).headers["x-lkn-backend"] for _ in range(6)]
    # the first request goes where an engine runs while the other backend starts; then they
    # take turns
    assert backends[2:] in (["chat/one", "chat/two"] * 2, ["chat/two", "chat/one"] * 2)
    assert served(c1) + served(c2) == 6 and min(served(c1), served(c2)) >= 2


def test_sticky_users_stay_on_their_backend(upstream: Any, make_gw: Any) -> None:
    (u1, _), (u2, _) = upstream(), upstream()
    gw = make_gw([remote(u1), remote(u2)], 'balance = "sticky",')
    client = gw.client()
    for user in ("w1", "w2", "w3", "w4"):  # warm-up: both backends running
        client.chat.completions.create(model="chat", messages=MSG, user=user)
    for user in ("ann", "bob", "cid"):
        seen = {client.chat.completions.with_raw_response.create(
            model="chat", messages=MSG, user=user).headers["x-lkn-backend"] for _ in range(3)}
        assert len(seen) == 1, user


def test_a_failing_backend_is_retried_elsewhere_then_its_circuit_opens(
        upstream: Any, make_gw: Any) -> None:
    (bad, bad_capture), (good, _) = upstream("--fail-status", "500"), upstream()
    gw = make_gw([remote(bad, 'id = "bad"'), remote(good, 'id = "good"')],
                 'balance = "round_robin", breaker = { failures = 2, open_s = 60 },')
    client = gw.client()
    for _ in range(8):
        r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert r.headers["x-lkn-backend"] == "chat/good"
    assert served(bad_capture) == 2  # two failures open it; then it is skipped
    status = http("GET", gw.base_url + "/status").json()["models"]["chat"]
    breakers = {b["backend"]: b["breaker"]["state"] for b in status["backends"]}
    assert breakers == {"chat/bad": "open", "chat/good": "closed"}
    metrics = http("GET", gw.base_url + "/metrics").text
    assert 'lkn_backend_retries_total{model="chat"} 2.0' in metrics
    events = gw.call(lambda: gw.state.bus.recent(kinds={"breaker"}))
    assert [(e["backend"], e["state"]) for e in events] == [("chat/bad", "open")]


def test_every_backend_failing_answers_the_last_error(upstream: Any, make_gw: Any) -> None:
    (u1, _), (u2, _) = upstream("--fail-status", "503"), upstream("--fail-status", "503")
    gw = make_gw([remote(u1), remote(u2)], "retries = 1,")
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "chat", "messages": MSG}))
    assert r.status_code == 503 and r.json()["error"]["source"] == "upstream"


def test_fifty_concurrent_requests_survive_a_replica_killed_mid_load(
        upstream: Any, make_gw: Any, tmp_path: Path) -> None:
    (u1, _), (u2, _), (u3, _) = upstream(), upstream(), upstream()
    gw = make_gw([remote(u1), remote(u2), remote(u3)], 'balance = "round_robin", retries = 2,')
    client = gw.client(max_retries=0)
    client.chat.completions.create(model="chat", messages=MSG)
    from tests.conftest import engine_processes
    port = u2.split(":")[2].split("/")[0]
    victim = [p for p in engine_processes(("fake_upstream.py",)) if port in p.cmdline()]

    def one(i: int) -> str:
        if i == 10:
            for p in victim:
                p.kill()
        answer = client.chat.completions.create(model="chat", messages=MSG, stream=i % 2 == 0)
        if i % 2 == 0:
            return "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        return answer.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(50)))
    assert answers == ["Paris is the capital."] * 50


def test_a_local_engine_and_a_remote_serve_one_model(upstream: Any, make_gw: Any,
                                                     fake_binary: str) -> None:
    url, _ = upstream()
    local = (f'{{ id = "box", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", '
             f'ctx_size = 4096, vram_mb = 100 }}')
    gw = make_gw([local, remote(url, 'id = "cloud"')], 'balance = "round_robin",')
    client = gw.client()
    seen: set[str] = set()
    deadline = time.monotonic() + 20  # the local engine starts while the remote answers
    while seen != {"chat/box", "chat/cloud"} and time.monotonic() < deadline:
        seen.add(client.chat.completions.with_raw_response.create(
            model="chat", messages=MSG).headers["x-lkn-backend"])
        time.sleep(0.1)
    assert seen == {"chat/box", "chat/cloud"}
    engines = {e["backend"]: e for e in http("GET", gw.base_url + "/status").json()["engines"]}
    assert engines["chat/box"]["pid"] and engines["chat/cloud"]["pid"] is None
    assert {e["model"] for e in engines.values()} == {"chat"}


def test_backend_config_errors(tmp_path: Path) -> None:
    from lkn.config import ConfigError
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, """
models = { { name = "m", balance = "fastest",
             backends = { { name = "x", upstream = { url = "http://a/v1" } },
                          { upstream = { url = "http://b/v1" }, fallbacks = { "m" } } } } }
""")
    assert info.value.errors == [
        "models[1].backends[1].name: belongs to the model, not to a backend",
        "models[1].backends[2].fallbacks: belongs to the model, not to a backend",
        'models[1].balance: must be one of round_robin, least_connections, random, weighted, '
        'sticky, got "fastest"']
    cfg = write_config(tmp_path, """
models = { { name = "m", aliases = { "mm" },
             backends = { { upstream = { url = "http://a/v1" }, weight = 3 },
                          { id = "b", upstream = { url = "http://b/v1" } } } } }
""")
    [m] = cfg.models
    assert [(b.name, b.weight, b.parent) for b in m.backends] == [("m/1", 3, "m"),
                                                                 ("m/b", 1, "m")]
    assert cfg.resolve("mm") is m and cfg.resolve("m/1") is None


def test_active_health_checks_open_the_circuit_of_a_dead_backend(
        upstream: Any, make_gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lkn.gateway import server
    from tests.conftest import engine_processes
    monkeypatch.setattr(server, "BACKEND_CHECK_S", 0.2)
    (u1, _), (u2, _) = upstream(), upstream()
    gw = make_gw([remote(u1, 'id = "a"'), remote(u2, 'id = "b"')],
                 'balance = "round_robin", breaker = { failures = 2, open_s = 60 },')
    client = gw.client()
    for _ in range(4):  # both running
        client.chat.completions.create(model="chat", messages=MSG)
    port = u2.split(":")[2].split("/")[0]
    for p in engine_processes(("fake_upstream.py",)):
        if port in p.cmdline():
            p.kill()
    deadline = time.monotonic() + 20
    state = ""
    while state != "open" and time.monotonic() < deadline:
        backends = http("GET", gw.base_url + "/status").json()["models"]["chat"]["backends"]
        state = {b["backend"]: b["breaker"]["state"] for b in backends}["chat/b"]
        time.sleep(0.1)
    assert state == "open"  # without a single request to it
    for _ in range(4):
        r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert r.headers["x-lkn-backend"] == "chat/a"


def test_backends_registered_at_runtime(upstream: Any, make_gw: Any) -> None:
    (u1, _), (u2, c2) = upstream(), upstream()
    gw = make_gw([remote(u1, 'id = "file"')], 'balance = "round_robin",',
                 'runtime_upstreams = { "127.0.0.1" },')  # off without it (issue 20)
    base = gw.base_url + "/admin/models/chat/backends"
    body = {"id": "extra", "weight": 2,
            "upstream": {"url": u2, "api_key_env": KEY_ENV, "model": "remote-model"}}
    r = http("POST", base, json.dumps(body))
    assert r.status_code == 201, r.text
    assert r.json()["backends"] == ["chat/file", "chat/extra"]
    client = gw.client()
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while seen != {"chat/file", "chat/extra"} and time.monotonic() < deadline:
        seen.add(client.chat.completions.with_raw_response.create(
            model="chat", messages=MSG).headers["x-lkn-backend"])
    assert seen == {"chat/file", "chat/extra"} and served(c2) >= 1
    listed = http("GET", gw.base_url + "/status").json()["models"]["chat"]["backends"]
    assert [(b["backend"], b["runtime"], b["weight"]) for b in listed] == [
        ("chat/file", False, 1), ("chat/extra", True, 2)]
    assert http("POST", gw.base_url + "/admin/reload").status_code == 200  # kept
    listed = http("GET", gw.base_url + "/status").json()["models"]["chat"]["backends"]
    assert [b["backend"] for b in listed] == ["chat/file", "chat/extra"]
    assert http("POST", base, json.dumps(body)).status_code == 400  # the id is taken
    bad = http("POST", base, json.dumps({"id": "x", "upstream": {"url": "ftp://h"}}))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "config_error"
    assert http("DELETE", base + "/file").status_code == 409  # from the config file
    assert http("DELETE", base + "/nope").status_code == 404
    r = http("DELETE", base + "/extra")
    assert r.status_code == 200 and r.json()["removed"] == "chat/extra"
    for _ in range(4):
        r2 = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert r2.headers["x-lkn-backend"] == "chat/file"
    assert http("DELETE", base + "/extra").status_code == 404


def test_a_model_with_one_backend_takes_none_at_runtime(tmp_path: Path, fake_binary: str,
                                                        gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, f"""
models = {{ {{ name = "solo", binary = {lua_str(fake_binary)}, model_file = "/x.gguf",
              ctx_size = 512, vram_mb = 10 }} }}
"""))
    r = http("POST", gw.base_url + "/admin/models/solo/backends",
             json.dumps({"id": "b", "upstream": {"url": "http://127.0.0.1:9/v1"}}))
    assert r.status_code == 409 and "declare backends" in r.json()["error"]["message"]


def test_a_hanging_backend_times_out_and_the_request_moves_on(upstream: Any,
                                                              make_gw: Any) -> None:
    (stuck, _), (good, _) = upstream("--hang"), upstream()
    gw = make_gw([remote(stuck, 'id = "stuck"').replace(
                      'model = "remote-model" }', 'model = "remote-model", timeout_s = 1 }'),
                  remote(good, 'id = "good"')], 'balance = "round_robin",')
    client = gw.client()
    for _ in range(3):
        r = client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert r.parse().choices[0].message.content == "Paris is the capital."
        assert r.headers["x-lkn-backend"] == "chat/good"


def test_after_the_first_byte_nothing_is_retried(upstream: Any, make_gw: Any) -> None:
    (cut, cut_capture), (good, good_capture) = upstream("--cut-stream"), upstream()
    gw = make_gw([remote(cut, 'id = "cut"'), remote(good, 'id = "good"')],
                 'balance = "round_robin",')
    client = gw.client()
    outcomes = []
    for _ in range(4):
        try:
            text = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(model="chat", messages=MSG,
                                                          stream=True) if c.choices)
            outcomes.append(text)
        except openai.APIError as exc:  # the error event after a cut stream
            outcomes.append(f"error: {exc.message}")
    assert "Paris is the capital." in outcomes
    cut_errors = [o for o in outcomes if o.startswith("error:")]
    assert cut_errors and all("without [DONE]" in o for o in cut_errors)
    assert served(cut_capture) + served(good_capture) == 4  # each request went to one only


@pytest.mark.engine
def test_the_real_llama_server_beside_a_fake_upstream(upstream: Any, make_gw: Any) -> None:
    from tests.conftest import smollm2_path
    url, _ = upstream()
    local = (f'{{ id = "box", model_file = {lua_str(smollm2_path())}, ctx_size = 512, '
             f'args = {{ "--threads", 1 }} }}')
    gw = make_gw([local, remote(url, 'id = "cloud"')], 'balance = "round_robin",')
    client = gw.client()
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        r = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
            temperature=0)
        seen[r.headers["x-lkn-backend"]] = r.parse().choices[0].message.content or ""
    assert set(seen) == {"chat/box", "chat/cloud"}
    assert seen["chat/cloud"] == "Paris is the capital." and seen["chat/box"]


def test_backends_inherit_the_models_settings(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
models = { { name = "m", parallel = 8, default_max_tokens = 99, pinned = true,
             backends = { { upstream = { url = "http://a/v1" } },
                          { upstream = { url = "http://b/v1" }, parallel = 2 } } } }
""")
    a, b = cfg.models[0].backends
    assert (a.parallel, a.default_max_tokens, a.pinned) == (8, 99, True)
    assert (b.parallel, b.default_max_tokens) == (2, 99)  # its own wins
    from lkn.config import ConfigError
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, 'models = { { name = "r", upstream = { url = "http://a/v1", '
                               'api_key_env = "sk-live-123" } } }')
    assert info.value.errors == ["models[1].upstream.api_key_env: must name an environment "
                                 "variable (letters, digits, _), not hold the key (value not "
                                 "shown)"]
