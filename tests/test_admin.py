"""The admin API, /status, /health/{model} and /ready against the fake engine (a real child
process), with the openai SDK as the client where requests are involved."""
from __future__ import annotations

import concurrent.futures
import http.client as http_client
import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, http, lua_str, read_until, write_config

MSG = [{"role": "user", "content": "hello there"}]
ADMIN = {"Authorization": "Bearer adm-1"}


def lua(binary: str, logs: Path, *, server: str = "", model: str = "", args: str = "",
        second: str = "") -> str:
    return f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, log_dir = {lua_str(str(logs))},
           {server} }}
models = {{
  {{ name = "fake", aliases = {{ "f" }}, binary = {lua_str(binary)},
    model_file = "/nonexistent/fake.gguf", args = {{ {args} }}, vram_mb = 100,
    variants = {{ {{ ctx_size = 2048 }}, {{ ctx_size = 4096 }} }}, {model} }},
  {second}
}}
"""


@pytest.fixture
def make_gw(tmp_path: Path, fake_binary: str, gateway_factory: Any) -> Any:
    def make(**kw: Any) -> Gateway:
        return gateway_factory(write_config(tmp_path, lua(fake_binary, tmp_path / "logs", **kw)))
    return make


def states(gw: Gateway) -> dict[str, str]:
    return {e["key"]: e["state"] for e in http("GET", gw.base_url + "/status").json()["engines"]}


def test_load_and_unload_through_the_admin_api(make_gw: Any) -> None:
    gw = make_gw()
    r = http("POST", gw.base_url + "/admin/models/f/load")
    assert r.status_code == 200 and r.json()["key"] == "fake@2048", r.text
    assert r.json()["state"] == "ready"
    assert states(gw) == {"fake@2048": "ready", "fake@4096": "stopped"}
    r = http("POST", gw.base_url + "/admin/models/fake/load?ctx=4096")
    assert r.json()["key"] == "fake@4096" and states(gw)["fake@4096"] == "ready"
    r = http("POST", gw.base_url + "/admin/models/fake/unload")
    assert r.status_code == 200
    assert sorted(e["key"] for e in r.json()["stopped"]) == ["fake@2048", "fake@4096"]
    assert states(gw) == {"fake@2048": "stopped", "fake@4096": "stopped"}
    # the next request starts it again
    assert gw.client().chat.completions.create(model="fake", messages=MSG).choices
    bad = http("POST", gw.base_url + "/admin/models/fake/load?ctx=999")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ctx"
    missing = http("POST", gw.base_url + "/admin/models/nope/load")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    sleepy = http("POST", gw.base_url + "/admin/models/fake/sleep")
    assert sleepy.status_code == 400 and "cannot sleep" in sleepy.json()["error"]["message"]


@pytest.mark.parametrize("force", [False, True])
def test_unload_waits_for_in_flight_work_unless_forced(make_gw: Any, force: bool) -> None:
    gw = make_gw(args='"--fake-tokens", 40, "--fake-token-delay-s", 0.05')
    client = gw.client()
    client.chat.completions.create(model="fake", messages=MSG)  # running
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        def stream() -> str:
            try:
                return "".join(c.choices[0].delta.content or "" for c in
                               client.chat.completions.create(model="fake", messages=MSG,
                                                              stream=True) if c.choices)
            except openai.APIError as exc:
                return f"error: {exc.message}"
        answer = pool.submit(stream)
        deadline = time.monotonic() + 10
        while gw.call(gw.manager.in_flight) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        r = http("POST", gw.base_url + "/admin/models/fake/unload" + ("?force=1" if force else ""))
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        text = answer.result(30)
    if force:
        assert text.startswith("error: engine fake@2048"), text
    else:
        assert text == "".join(f" w{i}" for i in range(40))
        assert took > 0.5  # it waited for the 2 s answer to finish
    assert set(states(gw).values()) == {"stopped"}


def test_status_reports_traffic_windows_and_candidates(make_gw: Any) -> None:
    gw = make_gw()
    client = gw.client()
    for _ in range(3):
        client.chat.completions.create(model="f", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=MSG, max_tokens=10**6)
    status = http("GET", gw.base_url + "/status?window=30").json()
    model = status["models"]["fake"]
    assert model["state"] == "idle" and model["last_used_s_ago"] < 30
    assert set(model["traffic"]) == {"60s", "300s", "900s", "30s"}
    last = model["traffic"]["60s"]
    assert last["requests"] == 4 and last["success_rate"] == 0.75
    assert last["p95_latency_s"] >= last["mean_latency_s"] > 0
    assert last["per_minute"] == 4.0
    engine, other = status["engines"]
    assert engine["key"] == "fake@2048" and engine["in_flight"] == 0 and engine["idle_s"] >= 0
    assert other["state"] == "stopped" and other["idle_s"] is None
    # the planner's swap cost: this engine's start was timed, nothing has stopped yet
    assert engine["swap_cost"]["start_s"] > 0 and engine["swap_cost"]["stop_s"] is None
    assert other["swap_cost"] == {"start_s": None, "stop_s": None}
    assert status["vram"]["estimated_mb"] == engine["vram_mb"]
    one = http("GET", gw.base_url + "/status/f").json()
    assert one["model"] == "fake" and one["traffic"]["60s"]["requests"] == 4
    assert http("GET", gw.base_url + "/status?window=0").status_code == 400
    assert http("GET", gw.base_url + "/status/nope").status_code == 404


def test_health_is_cheap_and_per_model_and_ready(make_gw: Any) -> None:
    gw = make_gw()
    health = http("GET", gw.base_url + "/health").json()
    assert health["status"] == "ok" and "engines" not in health
    assert "pid" not in json.dumps(health) and "port" not in json.dumps(health)
    one = http("GET", gw.base_url + "/health/f")
    assert one.status_code == 200 and one.json()["status"] == "idle"
    gw.client().chat.completions.create(model="f", messages=MSG)
    assert http("GET", gw.base_url + "/health/fake").json()["status"] == "ready"
    assert http("GET", gw.base_url + "/health/nope").status_code == 404
    ready = http("GET", gw.base_url + "/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_health_of_a_failed_model_is_503(make_gw: Any) -> None:
    gw = make_gw(server="max_start_failures = 1, failed_start_cooldown_s = 60",
                 args='"--fake-exit-before-ready", 3')
    with pytest.raises(openai.InternalServerError):  # both variants tried, both FAILED
        gw.client().chat.completions.create(model="fake", messages=MSG)
    r = http("GET", gw.base_url + "/health/fake")
    assert r.status_code == 503 and r.json()["status"] == "failed"


def test_admin_keys_guard_admin_and_status_but_not_health_or_readiness(make_gw: Any) -> None:
    gw = make_gw(server='admin_keys = { "adm-1" }, api_keys = { "client-1" }')
    url = gw.base_url
    for method, path in (("GET", "/status"), ("POST", "/admin/models/fake/load"),
                         ("GET", "/admin/events"), ("POST", "/admin/reload")):
        for headers in ({}, {"Authorization": "Bearer client-1"}):
            r = http(method, url + path, headers=headers)
            assert r.status_code == 401 and "admin key" in r.json()["error"]["message"], path
    assert http("GET", url + "/status", headers=ADMIN).status_code == 200
    assert http("POST", url + "/admin/models/fake/load", headers=ADMIN).status_code == 200
    # the admin key is not a client key
    assert http("GET", url + "/v1/models", headers=ADMIN).status_code == 401
    assert http("GET", url + "/v1/models",
                headers={"Authorization": "Bearer client-1"}).status_code == 200
    for path in ("/health", "/ready"):
        assert http("GET", url + path).status_code == 200, path
    for path in ("/health/fake", "/metrics"):  # they follow the keys: either kind
        assert http("GET", url + path).status_code == 401, path
        for key in ("client-1", "adm-1"):
            r = http("GET", url + path, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, path


def test_reload_through_the_admin_api_reports_config_errors(make_gw: Any) -> None:
    gw = make_gw()
    r = http("POST", gw.base_url + "/admin/reload")
    assert r.status_code == 200 and r.json()["generation"] == 2 and r.json()["models"] == ["fake"]
    path = Path(gw.cfg.path)
    path.write_text(path.read_text().replace("ctx_size = 4096", "ctx_size = -1"))
    r = http("POST", gw.base_url + "/admin/reload")
    assert r.status_code == 400 and r.json()["error"]["code"] == "config_error"
    assert "variants[2].ctx_size" in r.json()["error"]["message"]
    events = [e["type"] for e in gw.call(lambda: gw.state.bus.recent())]
    assert events.count("reload") == 2


def test_engine_logs_and_follow(make_gw: Any) -> None:
    gw = make_gw()
    gw.client().chat.completions.create(model="f", messages=MSG)
    r = http("GET", gw.base_url + "/admin/engines/fake@2048/logs?lines=5")
    assert r.status_code == 200 and len(r.json()["lines"]) == 5 and r.json()["file"]
    assert http("GET", gw.base_url + "/admin/engines/fake/logs").json()["key"] == "fake@2048"
    assert http("GET", gw.base_url + "/admin/engines/zzz/logs").status_code == 404
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("GET", "/admin/engines/fake@2048/logs?lines=0&follow=1")
    resp = conn.getresponse()
    assert resp.headers["content-type"].startswith("text/event-stream")
    threading.Timer(0.3, lambda: http("POST", gw.base_url + "/admin/models/fake/unload")).start()
    line = read_until(resp, b"lkn: stop")[-1]
    assert json.loads(line[6:])["engine"].startswith("fake@2048#")
    resp.close()
    conn.close()


def test_cancel_a_request_by_id(make_gw: Any) -> None:
    gw = make_gw(args='"--fake-load-s", 2, "--fake-tokens", 200, "--fake-token-delay-s", 0.05')
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        def plain() -> Any:
            return http("POST", gw.base_url + "/v1/chat/completions",
                        json.dumps({"model": "f", "messages": MSG}),
                        headers={"x-request-id": "job-1"})
        answer = pool.submit(plain)  # waits for the engine's start
        deadline = time.monotonic() + 10
        while not gw.call(gw.state.inflight.describe) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert http("GET", gw.base_url + "/status").json()["requests"][0]["id"] == "job-1"
        r = http("POST", gw.base_url + "/admin/requests/job-1/cancel")
        assert r.status_code == 200 and r.json()["cancelled"] == 1
        result = answer.result(30)
    assert result.status_code == 503
    err = result.json()["error"]
    assert err["code"] == "request_cancelled" and err["request_id"] == "job-1"
    assert result.headers["x-request-id"] == "job-1"
    gw.client().chat.completions.create(model="f", messages=MSG)  # ready: no loading feedback
    stream = gw.client().chat.completions.create(model="f", messages=MSG, stream=True,
                                                 extra_headers={"x-request-id": "job-2"})
    next(iter(stream))
    assert http("POST", gw.base_url + "/admin/requests/job-2/cancel").status_code == 200
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "cancelled by an operator" in info.value.message
    stream.close()
    assert http("POST", gw.base_url + "/admin/requests/job-2/cancel").status_code == 404
    assert gw.call(gw.manager.in_flight) == 0


def test_events_stream_engine_changes_and_finished_requests(make_gw: Any) -> None:
    gw = make_gw()
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("GET", "/admin/events")
    resp = conn.getresponse()
    assert resp.status == 200
    threading.Timer(0.2, lambda: gw.client().chat.completions.create(
        model="f", messages=MSG)).start()
    lines = read_until(resp, b'"type":"request"')
    events = [json.loads(x[6:]) for x in lines if x.startswith(b"data: ")]
    assert [(e["key"], e["state"]) for e in events if e["type"] == "engine"] == [
        ("fake@2048", "starting"), ("fake@2048", "ready")]
    done = events[-1]
    assert done["model"] == "fake" and done["variant"] == 2048 and done["status"] == 200
    assert done["mode"] == "PASSTHROUGH" and done["counted_by"] == "estimate"  # no GGUF
    assert done["latency_ms"] > 0 and done["id"].startswith("req-")
    resp.close()
    conn.close()
    history = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    history.request("GET", "/admin/events?history=2")
    past = history.getresponse()
    first = read_until(past, b"data: ")[-1]
    assert json.loads(first[6:])["type"] == "engine"
    past.close()
    history.close()


def test_a_swap_is_an_event(make_gw: Any, fake_binary: str) -> None:
    gw = make_gw(server="max_loaded_engines = 1", second=f"""
  {{ name = "other", binary = {lua_str(fake_binary)}, model_file = "/nonexistent/o.gguf",
    ctx_size = 1024 }},""")
    client = gw.client()
    client.chat.completions.create(model="fake", messages=MSG)
    client.chat.completions.create(model="other", messages=MSG)
    swaps = gw.call(lambda: gw.state.bus.recent(kinds={"swap"}))
    assert [(s["stopped_key"], s["for_key"]) for s in swaps] == [("fake@2048", "other@1024")]
    stopped = [e for e in gw.call(lambda: gw.state.bus.recent(kinds={"engine"}))
               if e["state"] == "stopped"]
    assert stopped[0]["reason"] == "evicted for other@1024"


def test_preload_starts_models_at_boot_and_after_reload(make_gw: Any, fake_binary: str) -> None:
    gw = make_gw(server='preload = { "f" }')
    deadline = time.monotonic() + 20
    while states(gw).get("fake@2048") != "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(gw) == {"fake@2048": "ready", "fake@4096": "stopped"}
    http("POST", gw.base_url + "/admin/models/fake/unload")
    assert http("POST", gw.base_url + "/admin/reload").status_code == 200
    while states(gw).get("fake@2048") != "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(gw)["fake@2048"] == "ready"


def test_a_pinned_model_is_never_evicted_nor_unloaded_for_idleness(
        make_gw: Any, fake_binary: str) -> None:
    gw = make_gw(server="max_loaded_engines = 2", model="pinned = true", second=f"""
  {{ name = "other", binary = {lua_str(fake_binary)}, model_file = "/nonexistent/o.gguf",
    vram_mb = 100, variants = {{ {{ ctx_size = 1024 }}, {{ ctx_size = 8192 }} }} }},""")
    client = gw.client()
    client.chat.completions.create(model="fake", messages=MSG)
    client.chat.completions.create(model="other", messages=MSG)
    # other@8192 needs a slot: other@1024 goes although fake@2048 was used longer ago
    client.chat.completions.create(model="other", messages=MSG, max_tokens=5000)
    assert states(gw) == {"fake@2048": "ready", "fake@4096": "stopped",
                          "other@1024": "stopped", "other@8192": "ready"}
    path = Path(gw.cfg.path)
    path.write_text(path.read_text().replace("max_loaded_engines = 2",
                                             "max_loaded_engines = 2, idle_unload_s = 0.3"))
    assert http("POST", gw.base_url + "/admin/reload").status_code == 200
    deadline = time.monotonic() + 10
    while states(gw)["other@8192"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert states(gw) == {"fake@2048": "ready", "fake@4096": "stopped",
                          "other@1024": "stopped", "other@8192": "stopped"}


def test_unload_answers_once_its_engines_stopped_even_if_traffic_restarts_them(
        make_gw: Any) -> None:
    gw = make_gw(args='"--fake-tokens", 20, "--fake-token-delay-s", 0.05')
    client = gw.client()
    client.chat.completions.create(model="fake", messages=MSG)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        long = pool.submit(lambda: list(client.chat.completions.create(
            model="fake", messages=MSG, stream=True)))
        deadline = time.monotonic() + 10
        while gw.call(gw.manager.in_flight) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        unload = pool.submit(http, "POST", gw.base_url + "/admin/models/fake/unload")
        time.sleep(0.2)
        later = pool.submit(client.chat.completions.create, model="fake", messages=MSG)
        assert unload.result(30).status_code == 200
        assert later.result(30).choices and long.result(30)
    states = [(e["key"], e["state"]) for e in gw.call(lambda: gw.state.bus.recent(
        kinds={"engine"}))]
    assert states[-4:] == [("fake@2048", "stopping"), ("fake@2048", "stopped"),
                           ("fake@2048", "starting"), ("fake@2048", "ready")]


@pytest.mark.parametrize("headers, allowed", [
    ({}, True),
    ({"Origin": "http://127.0.0.1:PORT"}, True),          # lkn's own page (the dashboard)
    ({"Origin": "https://evil.example"}, False),           # another site's page
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Host": "evil.example:PORT"}, False),                # DNS rebinding
])
def test_the_loopback_admin_api_refuses_other_sites_pages(
        make_gw: Any, headers: dict[str, str], allowed: bool) -> None:
    gw = make_gw()
    headers = {k: v.replace("PORT", str(gw.port)) for k, v in headers.items()}
    r = http("POST", gw.base_url + "/admin/models/fake/load", headers=headers)
    assert (r.status_code == 200) is allowed, r.text
    if not allowed:
        assert r.status_code == 403 and "other sites" in r.json()["error"]["message"]


def test_admin_streams_end_at_shutdown(make_gw: Any) -> None:
    gw = make_gw(server="shutdown_drain_s = 60")
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=90)
    conn.request("GET", "/admin/events")
    resp = conn.getresponse()
    t0 = time.monotonic()
    gw.stop()
    assert time.monotonic() - t0 < 30  # not held for the 60 s drain
    resp.close()
    conn.close()
