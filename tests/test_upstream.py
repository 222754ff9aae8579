"""Remote OpenAI-compatible upstreams (issue 11, item 1): a model answered by a server elsewhere,
no process and no VRAM, the key from the environment and never in a log or an error body. The
upstream is a fake OpenAI server in a child process; the client is the openai SDK."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import FAKE_UPSTREAM, SECRET, Gateway, http, lua_str, write_config

MSG = [{"role": "user", "content": "What is the capital of France?"}]


def config(tmp_path: Path, fake_binary: str, url: str, *, server: str = "",
           local: str = "", remote: str = "") -> str:
    return f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, max_start_failures = 1,
           log_dir = {lua_str(str(tmp_path / 'logs'))}, {server} }}
models = {{
  {{ name = "local", binary = {lua_str(fake_binary)}, model_file = "/nonexistent/l.gguf",
    ctx_size = 4096, vram_mb = 100, {local} }},
  {{ name = "remote", aliases = {{ "gpt" }}, ctx_size = 8192,
    upstream = {{ url = {lua_str(url)}, api_key_env = "LKN_TEST_UPSTREAM_KEY",
                 model = "remote-model" }}, {remote} }},
}}
"""


@pytest.fixture
def make_gw(tmp_path: Path, fake_binary: str, gateway_factory: Any,
            monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(url: str, key: str | None = SECRET, **kw: Any) -> Gateway:
        if key is None:
            monkeypatch.delenv("LKN_TEST_UPSTREAM_KEY", raising=False)
        else:
            monkeypatch.setenv("LKN_TEST_UPSTREAM_KEY", key)
        return gateway_factory(write_config(tmp_path, config(tmp_path, fake_binary, url, **kw)))
    return make


def test_a_remote_model_answers_like_a_local_one(upstream: Any, make_gw: Any) -> None:
    url, capture = upstream()
    gw = make_gw(url)
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(model="gpt", messages=MSG)
    answer = raw.parse()
    assert answer.choices[0].message.content == "Paris is the capital."
    assert raw.headers["x-lkn-model"] == "remote"
    assert raw.headers["x-lkn-prompt-tokens"] == "0;skipped"
    chunks = list(client.chat.completions.create(model="remote", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Paris is the capital."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    text = client.completions.create(model="remote", prompt="The capital", max_tokens=2)
    assert text.choices[0].text == "Paris is"
    sent = [json.loads(line) for line in capture.read_text().splitlines()]
    assert {s["body"]["model"] for s in sent} == {"remote-model"}
    assert [s["path"] for s in sent] == ["/v1/chat/completions"] * 2 + ["/v1/completions"]
    engines = {e["key"]: e for e in http("GET", gw.base_url + "/status").json()["engines"]}
    remote = engines["remote@8192"]
    assert remote["state"] == "ready" and remote["pid"] is None and remote["vram_mb"] == 0
    assert remote["upstream"] == url


def test_a_remote_model_takes_no_engine_slot(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream()
    gw = make_gw(url, server="max_loaded_engines = 1")
    client = gw.client()
    client.chat.completions.create(model="local", messages=MSG)
    client.chat.completions.create(model="remote", messages=MSG)
    client.chat.completions.create(model="local", messages=MSG)
    states = {e["key"]: e["state"]
              for e in http("GET", gw.base_url + "/status").json()["engines"]}
    assert states == {"local@4096": "ready", "remote@8192": "ready"}
    assert not gw.call(lambda: gw.state.bus.recent(kinds={"swap"}))


def test_the_key_never_reaches_a_log_or_an_error_body(
        upstream: Any, make_gw: Any, caplog: pytest.LogCaptureFixture) -> None:
    url, _ = upstream()
    wrong = "sk-wrong-key-that-must-stay-secret"
    gw = make_gw(url, key=wrong)
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().chat.completions.create(model="remote", messages=MSG)
    message = info.value.message
    assert "is not answering: HTTP 401" in message and "***" in message
    status = http("GET", gw.base_url + "/status").text
    for text in (message, json.dumps(info.value.body), caplog.text, status,
                 gw.call(lambda: gw.manager.records()[1].process.logs.tail(50))):
        assert wrong not in text and SECRET not in text


def test_a_missing_key_variable_is_a_clear_503(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream()
    gw = make_gw(url, key=None)
    with pytest.raises(openai.InternalServerError) as info:
        gw.client().chat.completions.create(model="remote", messages=MSG)
    assert info.value.status_code == 503
    assert "LKN_TEST_UPSTREAM_KEY" in info.value.message and "is not set" in info.value.message


def test_upstream_errors_are_relayed_with_their_status(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream("--fail-status", "429")
    gw = make_gw(url)
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "remote", "messages": MSG}))
    assert r.status_code == 429 and r.headers["x-lkn-error-source"] == "engine"
    assert r.json()["error"]["source"] == "upstream"
    assert r.json()["error"]["message"] == "injected upstream error 429"


def test_the_homeostat_escalates_to_a_remote_model(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream()
    gw = make_gw(url, local='args = { "--fake-entropy", "high" }, homeostasis = { '
                            'mode = "homeostatic", intervention = "escalate", '
                            'escalate_to = "remote", threshold = 0.1 }')
    from tests.test_escalation_gateway import record_acquires
    calls = record_acquires(gw)
    raw = gw.client().chat.completions.with_raw_response.create(model="local", messages=MSG)
    assert raw.parse().choices[0].message.content == "Paris is the capital."
    assert raw.headers["x-lkn-escalated-from"] == "local"
    assert raw.headers["x-lkn-model"] == "remote"
    # the remote model counts no tokens, and still queues by the request's first arrival
    assert [c["model"] for c in calls] == ["local", "remote"]
    assert calls[1]["arrived"] is not None


def test_a_remote_model_is_configured_without_files(tmp_path: Path) -> None:
    from lkn.config import ConfigError, missing_model_files
    cfg = write_config(tmp_path, """
models = { { name = "r", upstream = { url = "https://api.example/v1/", model = "gpt-x" } } }
""")
    [m] = cfg.models
    assert m.engine == "remote" and m.upstream is not None
    assert m.upstream.url == "https://api.example/v1" and m.variants[0].ctx_size == 131072
    assert m.variants[0].vram_mb == 0 and missing_model_files(cfg) == []
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, """
models = { { name = "r", upstream = { url = "ftp://x", key = "sk-inline" },
             variants = { { ctx_size = 1 } } } }
""")
    assert info.value.errors == [
        'models[1].upstream.url: must start with http:// or https://, got "ftp://x"']


def test_a_failing_upstream_falls_back_to_the_next_model(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream("--fail-status", "500")
    gw = make_gw(url, remote='fallbacks = { "local" }')
    raw = gw.client().chat.completions.with_raw_response.create(model="gpt", messages=MSG)
    assert raw.parse().choices[0].message.content.startswith(" w0")  # the local fake's words
    assert raw.headers["x-lkn-model"] == "local"
    assert raw.headers["x-lkn-fallback-from"] == "remote"
    metrics = http("GET", gw.base_url + "/metrics").text
    assert 'lkn_fallbacks_total{model="remote",to="local"} 1.0' in metrics


def test_a_local_engine_that_cannot_start_falls_back_to_a_remote(upstream: Any,
                                                                  make_gw: Any) -> None:
    url, _ = upstream()
    gw = make_gw(url, local='args = { "--fake-exit-before-ready", 3 }, fallbacks = { "remote" }')
    chunks = list(gw.client().chat.completions.create(model="local", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Paris is the capital."


def test_when_every_model_fails_the_last_error_is_answered(upstream: Any, make_gw: Any) -> None:
    url, _ = upstream("--fail-status", "503")
    gw = make_gw(url, remote='fallbacks = { "local" }',
                 local='args = { "--fake-exit-before-ready", 3 }')
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "local", "messages": MSG}))
    assert r.status_code == 503 and r.json()["error"]["source"] == "lkn"  # no fallback of local
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "remote", "messages": MSG}))
    assert r.status_code == 503 and "is FAILED" in r.json()["error"]["message"]  # local's


def test_a_request_no_variant_holds_goes_to_the_context_fallback(upstream: Any,
                                                                 make_gw: Any) -> None:
    url, _ = upstream()
    gw = make_gw(url, local='context_fallback = "remote"')
    raw = gw.client().chat.completions.with_raw_response.create(
        model="local", messages=MSG, max_tokens=6000)
    assert raw.headers["x-lkn-model"] == "remote"
    assert raw.headers["x-lkn-fallback-from"] == "local"
    with pytest.raises(openai.BadRequestError):  # beyond the fallback's context too
        gw.client().chat.completions.create(model="remote", messages=MSG, max_tokens=9000)


def test_fallback_names_are_checked(tmp_path: Path) -> None:
    from lkn.config import ConfigError
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, """
models = { { name = "a", model_file = "/x.gguf", ctx_size = 512,
             fallbacks = { "b", "a" }, context_fallback = "zz" } }
""")
    assert info.value.errors == [
        'models[1].context_fallback: no such model, got "zz"',
        'models[1].fallbacks[1]: no such model, got "b"',
        "models[1].fallbacks[2]: a model cannot fall back to itself"]


def test_a_command_engine_is_supervised_like_llama_server(tmp_path: Path,
                                                          gateway_factory: Any) -> None:
    from tests.conftest import engine_processes
    gw = gateway_factory(write_config(tmp_path, f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1,
           log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "cmd", engine = "command", health_path = "/v1/models",
              command = {{ {lua_str(sys.executable)}, {lua_str(str(FAKE_UPSTREAM))},
                          "--port", "{{port}}", "--name", "cmd" }},
              variants = {{ {{ ctx_size = 2048, vram_mb = 500 }} }} }} }}
"""))
    answer = gw.client().chat.completions.with_raw_response.create(model="cmd", messages=MSG)
    assert answer.parse().choices[0].message.content == "Paris is the capital."
    assert answer.headers["x-lkn-prompt-tokens"] == "0;skipped"
    [engine] = http("GET", gw.base_url + "/status").json()["engines"]
    assert engine["state"] == "ready" and engine["vram_mb"] == 500 and engine["pid"]
    assert any(p.pid == engine["pid"] for p in engine_processes(("fake_upstream.py",)))
    assert http("POST", gw.base_url + "/admin/models/cmd/unload").status_code == 200
    deadline = time.monotonic() + 10
    while any(p.pid == engine["pid"] for p in engine_processes(("fake_upstream.py",))):
        assert time.monotonic() < deadline, "the command engine outlived its unload"
        time.sleep(0.05)


def test_command_engine_config_errors(tmp_path: Path) -> None:
    from lkn.config import ConfigError
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, """
models = { { name = "a", engine = "command", command = { "srv", "--port", "8000" },
             ctx_size = 512 },
           { name = "b", engine = "command", ctx_size = 512, vram_mb = 10 },
           { name = "c", model_file = "/x.gguf", ctx_size = 512, command = { "x" } } }
""")
    assert info.value.errors == [
        'models[1].command: must pass {port} to the server (lkn picks the port), got '
        "['srv', '--port', '8000']",
        "models[1].vram_mb: a command engine needs its VRAM need in MiB (lkn cannot "
        "estimate it)",
        'models[2].command: engine = "command" needs the server\'s argv, e.g. '
        '{ "vllm", "serve", "{model_file}", "--port", "{port}" }',
        'models[3].command: only engine = "command" takes a command']


def test_a_reload_that_keeps_an_upstream_applies_its_new_timeout(tmp_path: Path) -> None:
    from lkn.engines.remote import RemoteEngine
    cfg = write_config(tmp_path, 'models = { { name = "r", upstream = { url = "http://h/v1", '
                                 'timeout_s = 5 } } }')
    [model] = cfg.models
    engine = RemoteEngine(model, model.variants[0])
    assert engine.request_timeout_s == 5 and model.parallel == 64
    newer = write_config(tmp_path, 'models = { { name = "r", upstream = { url = "http://h/v1", '
                                   'timeout_s = 9 } } }')
    engine.model = newer.models[0]  # what EngineRecord.adopt does on a reload
    assert engine.request_timeout_s == 9
