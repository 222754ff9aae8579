"""The gateway end to end with the openai SDK, against the fake engine for fault injection."""
from __future__ import annotations

import concurrent.futures
import http.client as http_client
import json
import re
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, HttpResult, http, lua_str, read_until, write_config

MSG = [{"role": "user", "content": "hello there"}]


def config_lua(binary: str, *, server: str = "", model_extra: str = "", args: str = "",
               second: str = "") -> str:
    return f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, log_dir = {lua_str('LOGDIR')},
           failed_start_cooldown_s = 30, {server} }}
models = {{
  {{ name = "fake", aliases = {{ "f" }}, binary = {lua_str(binary)},
    model_file = "/nonexistent/fake.gguf", ctx_size = 4096, args = {{ {args} }}, {model_extra} }},
  {second}
}}
"""


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, gateway_factory: Any, request: Any) -> Gateway:
    params = getattr(request, "param", {})
    lua = config_lua(fake_binary, **params).replace("LOGDIR", str(tmp_path / "logs"))
    return gateway_factory(write_config(tmp_path, lua))


def post(gw: Gateway, path: str, content: bytes | str, headers: dict | None = None
         ) -> HttpResult:
    return http("POST", gw.base_url + path, content, headers)


def test_sdk_raises_its_own_error_classes(gw: Gateway) -> None:
    client = gw.client()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=MSG)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="fake", prompt=[{"x": 1}])  # type: ignore[list-item]
    r = http("GET", gw.base_url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["source"] == "lkn"


def test_chat_stream_relays_events_with_headers(gw: Gateway) -> None:
    client = gw.client()
    client.chat.completions.create(model="f", messages=MSG)  # the engine runs: no loading
    with client.chat.completions.with_streaming_response.create(
            model="f", messages=MSG, stream=True) as resp:
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-lkn-model"] == "fake"
        assert resp.headers["x-lkn-variant"] == "4096"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "".join(f" w{i}" for i in range(8))


def test_engine_error_is_relayed_with_engine_status_and_marker(gw: Gateway) -> None:
    r = post(gw, "/v1/chat/completions", json.dumps(
        {"model": "fake", "messages": MSG, "fake_error_status": 422}))
    assert r.status_code == 422
    assert r.headers["x-lkn-error-source"] == "engine"
    err = r.json()["error"]
    assert err["message"] == "injected engine error 422" and err["source"] == "llamacpp"


@pytest.mark.parametrize("gw", [{"args": '"--fake-cut-stream"'}], indirect=True)
def test_stream_cut_without_done_raises_in_the_sdk(gw: Gateway) -> None:
    stream = gw.client().chat.completions.create(model="fake", messages=MSG, stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk)
    assert "ended the stream without [DONE]" in str(info.value.message)
    assert got, "the events before the cut were relayed"


@pytest.mark.parametrize("gw", [{"args": '"--fake-exit-before-ready", 3',
                                 "server": "max_start_failures = 1"}], indirect=True)
def test_engine_that_cannot_start_gives_503_and_no_retry_and_the_admin_its_log(
        gw: Gateway) -> None:
    r = post(gw, "/v1/chat/completions", json.dumps({"model": "fake", "messages": MSG}))
    assert r.status_code == 503
    assert r.headers["x-should-retry"] == "false"
    msg = r.json()["error"]["message"]
    # lkn's reason for the client; the engine's own words only for the operator (#20)
    assert "exited with code 3 before it was ready" in msg and "out of memory" not in msg
    [engine] = http("GET", gw.base_url + "/status").json()["engines"]
    assert "out of memory" in engine["log_tail"]
    with pytest.raises(openai.InternalServerError) as info:  # SDK: one attempt, not three
        gw.client(max_retries=2).chat.completions.create(model="fake", messages=MSG)
    assert info.value.status_code == 503
    # FAILED: answered at once, no second spawn of the engine, for any of the SDK's tries
    assert re.search(r"engine fake@4096 failed 1 times in a row and is FAILED; next try in \d+s",
                     info.value.message)
    assert "out of memory" not in info.value.message
    [proc] = gw.call(gw.manager.processes)
    assert Path(proc.logs.path).read_text().count("--- lkn: start: ") == 1


@pytest.mark.parametrize("gw", [{"server": 'api_keys = { "k-123" }'}], indirect=True)
def test_api_keys(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="wrong").models.list()
    assert [m.id for m in gw.client(api_key="k-123").models.list().data] == ["fake", "f"]
    assert http("GET", gw.base_url + "/health").status_code == 200


# vram_mb: no footprint run, whose debug-level engine output is not kept once it is ready
@pytest.mark.parametrize("gw", [{"args": '"--fake-tokens", 200, "--fake-token-delay-s", 0.05',
                                 "model_extra": "vram_mb = 100"}], indirect=True)
def test_client_disconnect_closes_upstream_and_releases(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                  body=json.dumps({"model": "fake", "messages": MSG, "stream": True}))
    resp = conn.getresponse()
    read_until(resp, b"data:")
    assert gw.call(gw.manager.in_flight) == 1
    resp.close()
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gw.call(gw.manager.in_flight):
        time.sleep(0.05)
    assert gw.call(gw.manager.in_flight) == 0
    proc = gw.call(gw.manager.processes)[0]
    while time.monotonic() < deadline and "client went away" not in proc.logs.tail(50):
        time.sleep(0.05)
    assert "fake: client went away mid-stream" in proc.logs.tail(50)
    metrics = http("GET", gw.base_url + "/metrics").text
    assert 'lkn_requests_total{api="openai",key="",model="fake",route="chat",status="499"} 1' in metrics
    # a disconnect is the client's business: no internal-error traceback in the log
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("gw", [{"server": "max_queue_per_model = 1, queue_timeout_s = 30",
                                 "args": '"--fake-load-s", 1.5'}], indirect=True)
def test_full_queue_answers_429_with_retry_after(gw: Gateway) -> None:
    body = json.dumps({"model": "fake", "messages": MSG})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, gw, "/v1/chat/completions", body)
        time.sleep(0.5)
        second = post(gw, "/v1/chat/completions", body)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "queue_full"
        assert first.result().status_code == 200


@pytest.mark.parametrize("gw", [{"server": "queue_timeout_s = 0.5",
                                 "args": '"--fake-load-s", 3'}], indirect=True)
def test_request_still_queued_at_its_timeout_gets_504(gw: Gateway) -> None:
    r = post(gw, "/v1/chat/completions", json.dumps({"model": "fake", "messages": MSG}))
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"


def test_models_list_health_and_metrics(gw: Gateway) -> None:
    client = gw.client()
    models = client.models.list().data
    assert [(m.id, m.loaded) for m in models] == [("fake", False), ("f", False)]  # type: ignore[attr-defined]
    client.chat.completions.create(model="fake", messages=MSG)
    assert all(m.loaded for m in client.models.list().data)  # type: ignore[attr-defined]
    assert client.models.retrieve("f").id == "f"
    health = http("GET", gw.base_url + "/status").json()
    assert health["engines"][0]["state"] == "ready" and health["engines"][0]["key"] == "fake@4096"
    metrics = http("GET", gw.base_url + "/metrics").text
    assert 'lkn_requests_total{api="openai",key="",model="fake",route="chat",status="200"} 1' in metrics
    http("POST", gw.base_url + "/v1/chat/completions", '{"model": "no/such", "messages": []}')
    http("POST", gw.base_url + "/v1/chat/completions", '{"model": "no/such"}')
    metrics = http("GET", gw.base_url + "/metrics").text
    assert 'lkn_requests_total{api="openai",key="",model="unknown",route="chat",status="400"} 2' in metrics
    assert "no/such" not in metrics
    assert 'lkn_engine_up{engine="fake@4096",state="ready"} 1' in metrics
