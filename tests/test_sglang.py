"""The SGLang engine against a fake SGLang that follows SGLang's API shapes, run as a real child
process in place of ``python -m sglang.launch_server``."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import psutil
import pytest

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.process import EngineProcess, PortPool, State
from lkn.engines.sglang import SGLangEngine
from lkn.probe import normalized_entropy
from lkn.tokens import count_locally
from tests.conftest import (FAKE_SGLANG, Gateway, free_port, http, lua_str, make_wrapper,
                            write_config)
from tests.fakes.hf_model import make_hf_model_dir

MSG = [{"role": "user", "content": "what is the capital of france ?"}]


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return make_hf_model_dir(tmp_path / "tiny-hf")


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    return make_wrapper(tmp_path, FAKE_SGLANG, "fake-python")


def dead(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def sg_config(tmp_path: Path, hf_dir: Path, fake_python: str, fake_binary: str, *,
              sg_args: str = "", sg_extra: str = "", server: str = "") -> Any:
    return write_config(tmp_path, f"""
server = {{ max_loaded_engines = 1, stop_grace_s = 2, log_dir = {lua_str(str(tmp_path / 'logs'))},
           engine_start_timeout_s = 30, {server} }}
models = {{
  {{ name = "sg", engine = "sglang", python = {lua_str(fake_python)},
    model_file = {lua_str(str(hf_dir))}, ctx_size = 4096, default_max_tokens = 16,
    args = {{ "--fake-load-s", 0.3, "--fake-warmup-s", 0.3, {sg_args} }}, {sg_extra} }},
  {{ name = "llama", binary = {lua_str(fake_binary)}, model_file = "/nonexistent.gguf",
    ctx_size = 2048 }},
}}
""")


@pytest.fixture
def gw(tmp_path: Path, hf_dir: Path, fake_python: str, fake_binary: str, gateway_factory: Any,
       request: Any) -> Gateway:
    return gateway_factory(sg_config(tmp_path, hf_dir, fake_python, fake_binary,
                                     **getattr(request, "param", {})))


def test_argv_follows_sglang_launch_server() -> None:
    model = ModelConfig(name="qwen", engine="sglang", python="/opt/sgl/bin/python",
                        mem_fraction_static=0.7, sleep_when_idle_s=60,
                        variants=(VariantConfig(8192, "/models/qwen", 999, args=("--tp", "1")),))
    assert SGLangEngine(model, model.variants[0]).argv(30001) == [
        "/opt/sgl/bin/python", "-m", "sglang.launch_server", "--model-path", "/models/qwen",
        "--host", "127.0.0.1", "--port", "30001", "--context-length", "8192",
        "--served-model-name", "qwen", "--mem-fraction-static", "0.7",
        "--enable-memory-saver", "--tp", "1"]


async def sg_process(hf_dir: Path, fake_python: str, session: aiohttp.ClientSession,
                     *args: str, health_timeout_s: float = 20) -> EngineProcess:
    model = ModelConfig(name="sg", engine="sglang", python=fake_python,
                        health_timeout_s=health_timeout_s,
                        variants=(VariantConfig(4096, str(hf_dir), 999, args=args),))
    port = free_port()
    return EngineProcess(SGLangEngine(model, model.variants[0]), ports=PortPool(port, port + 20),
                         session=session, start_timeout_s=30, stop_grace_s=1)


async def test_ready_after_refused_then_503_and_whole_tree_stopped(
        hf_dir: Path, fake_python: str, tmp_path: Path) -> None:
    children, escaped = tmp_path / "children", tmp_path / "escaped"
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, "--fake-load-s", "0.4",
                                "--fake-warmup-s", "0.4", "--fake-children", str(children),
                                "--fake-escaped-child", str(escaped))
        await proc.ensure_ready()
        assert proc.state is State.READY and proc.client._has_ready is True
        assert proc.client.effective_ctx == 4096  # from /server_info
        pids = [int(p) for p in children.read_text().split()] + [int(escaped.read_text())]
        assert all(not dead(p) for p in pids)
        await proc.stop()
        time.sleep(0.2)
        assert all(dead(p) for p in pids), "a scheduler/detokenizer/escaped child survived"


async def test_old_sglang_without_ready_uses_slow_health(hf_dir: Path, fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, "--fake-no-ready",
                                "--fake-health-delay-s", "1.5", health_timeout_s=5)
        await proc.ensure_ready()  # a 1 s health timeout would never pass
        assert proc.client._has_ready is False and proc.state is State.READY
        await proc.stop()


async def test_ignored_sigterm_kills_tree_after_grace(hf_dir: Path, fake_python: str,
                                                      tmp_path: Path) -> None:
    children = tmp_path / "children"
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, "--fake-ignore-sigterm",
                                "--fake-children", str(children))
        await proc.ensure_ready()
        pids = [int(p) for p in children.read_text().split()]
        await proc.stop()
        time.sleep(0.2)
        assert all(dead(p) for p in [*pids, proc.pid])


def test_openai_sdk_through_lkn_to_sglang(gw: Gateway) -> None:
    client = gw.client()
    r = client.chat.completions.with_raw_response.create(model="sg", messages=MSG, max_tokens=5)
    assert r.headers["x-lkn-model"] == "sg"
    assert r.parse().choices[0].message.content == " w0 w1 w2 w3 w4"
    stream = client.chat.completions.create(model="sg", messages=MSG, max_tokens=6, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "".join(f" w{i}" for i in range(6))
    assert client.completions.create(model="sg", prompt="hello there",
                                     max_tokens=3).choices[0].text == " w0 w1 w2"


def test_swap_llama_and_sglang_both_directions(gw: Gateway) -> None:
    client = gw.client()
    order = ["llama", "sg", "llama", "sg"]
    for model in order:
        client.chat.completions.create(model=model, messages=MSG, max_tokens=2)
    events = [(key.split("@")[0], state) for _, key, state in gw.call(lambda: list(gw.manager.events))
              if state in ("starting", "stopped")]
    assert events == [("llama", "starting"), ("llama", "stopped"), ("sg", "starting"),
                      ("sg", "stopped"), ("llama", "starting"), ("llama", "stopped"),
                      ("sg", "starting")]


def test_token_counts_via_tokenize_match_local_and_usage(gw: Gateway, hf_dir: Path) -> None:
    client = gw.client()
    for messages in (MSG, [{"role": "system", "content": "answer briefly ."},
                           {"role": "user", "content": "tell me a story about a blue box"}]):
        usage = client.chat.completions.create(model="sg", messages=messages,
                                               max_tokens=2).usage
        body = {"model": "sg", "messages": messages}
        proc = gw.call(gw.manager.ready_process, "sg")
        live = gw.call(proc.client.count_tokens, gw.state.session, proc.base_url, "chat", body)
        assert live == usage.prompt_tokens
        assert count_locally(str(hf_dir), "hf", "chat", body) == usage.prompt_tokens


def test_probe_reads_generate_top_logprobs(gw: Gateway) -> None:
    r = gw.client().chat.completions.with_raw_response.create(
        model="sg", messages=MSG, max_tokens=3,
        extra_body={"lkn": {"mode": "homeostatic", "threshold": 0.5}})
    weights = [math.exp(-2.0 * i) for i in range(10)]  # the fake's first-position distribution
    expected = normalized_entropy([math.log(w / sum(weights)) for w in weights])
    assert float(r.headers["x-lkn-entropy"]) == pytest.approx(expected, abs=1e-4)
    assert r.headers["x-lkn-mode"] == "FLUID"


@pytest.mark.parametrize("gw", [{"sg_args": '"--context-length", 20'}], indirect=True)
def test_sglang_unwrapped_error_is_normalized(gw: Gateway) -> None:
    # the engine runs with a smaller context than the config says: SGLang itself rejects the
    # request with its unwrapped {"object": "error", ...} body
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="sg", messages=MSG, max_tokens=30)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith("Requested token count exceeds the model's maximum "
                                      "context length of 20 tokens")
    assert {k: body[k] for k in ("type", "param", "code", "source")} == {
        "type": "BadRequestError", "param": None, "code": "400", "source": "sglang"}
    assert info.value.response.headers["x-lkn-error-source"] == "engine"


@pytest.mark.parametrize("gw", [{"sg_args": '"--api-key", "s3cret"'}], indirect=True)
def test_sglang_string_auth_error_becomes_openai_shape(gw: Gateway) -> None:
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "sg", "messages": MSG, "max_tokens": 2}))
    assert r.status_code == 401
    assert r.headers["x-lkn-error-source"] == "engine"
    assert r.json() == {"error": {"message": "Unauthorized", "type": "invalid_request_error",
                                  "param": None, "code": None, "source": "sglang"}}


def test_sglang_in_stream_error_becomes_clean_error_event(gw: Gateway) -> None:
    stream = gw.client().chat.completions.create(
        model="sg", messages=MSG, max_tokens=6, stream=True,
        extra_body={"fake_stream_error": True})
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert info.value.message == "scheduler aborted the request"
    assert info.value.body["source"] == "sglang"  # type: ignore[index]


@pytest.mark.parametrize("gw", [{"sg_extra": "sleep_when_idle_s = 0.3, mem_fraction_static = 0.5"}],
                         indirect=True)
def test_idle_engine_releases_memory_and_resumes(gw: Gateway) -> None:
    client = gw.client()
    client.chat.completions.create(model="sg", messages=MSG, max_tokens=2)
    proc = gw.call(gw.manager.ready_process, "sg")
    pid = proc.pid
    deadline = time.monotonic() + 10
    while proc.state is not State.ASLEEP and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.state is State.ASLEEP and "memory released" in proc.logs.tail(20)
    slots = gw.call(lambda: [r.slot() for r in gw.manager.records() if r.running()])
    assert [(s.model, s.ctx, s.state) for s in slots] == [("sg", 4096, "asleep")]
    health = http("GET", gw.base_url + "/health").json()
    assert health["engines"][0]["state"] == "asleep"
    r = client.chat.completions.create(model="sg", messages=MSG, max_tokens=2)
    assert r.choices[0].message.content == " w0 w1"
    assert proc.pid == pid and "memory resumed" in proc.logs.tail(20)  # same process, woken
