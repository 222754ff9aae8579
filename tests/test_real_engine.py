"""The openai SDK against lkn against a real llama-server serving SmolLM2-135M on CPU.

One gateway is shared by the module (engines start in about a second with small contexts);
``max_loaded_engines = 1`` makes every change of model a real swap.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from lkn.engines.bound import model_shape, prompt_bound
from lkn.engines.process import State
from lkn.engines.tokens import count_locally
from tests.conftest import (Gateway, free_port, http, lkn_daemon, lua_str, smollm2_path,
                            write_config)

pytestmark = pytest.mark.engine

SHORT = [{"role": "user", "content": "What is the capital of France?"}]


def long_messages(words: int) -> list[dict[str, str]]:
    text = " ".join(f"item{i} is a small blue box." for i in range(words // 6))
    return [{"role": "user", "content": f"Summarize this list: {text}"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("real")
    lua = f"""
server = {{ max_loaded_engines = 1, stop_grace_s = 5, log_dir = {lua_str(str(tmp / 'logs'))},
           engine_start_timeout_s = 120, token_margin = 16 }}
local smol = {lua_str(smollm2_path())}
models = {{
  {{ name = "smol", aliases = {{ "smol-alias" }}, model_file = smol, gpu_layers = 0,
    default_max_tokens = 64, args = {{ "--threads", 1 }},
    variants = {{ {{ ctx_size = 512 }}, {{ ctx_size = 2048 }} }} }},
  {{ name = "smol-b", model_file = smol, gpu_layers = 0, ctx_size = 1024,
    default_max_tokens = 64, args = {{ "--threads", 1 }} }},
  {{ name = "smol-embed", model_file = smol, gpu_layers = 0, ctx_size = 512, embeddings = true,
    args = {{ "--threads", 1, "--pooling", "mean" }} }},
}}
"""
    gateway = Gateway(write_config(tmp, lua))
    yield gateway
    gateway.stop()


def chat(gw: Gateway, model: str, messages: list[dict[str, str]], **kw: Any) -> Any:
    return gw.client().chat.completions.with_raw_response.create(
        model=model, messages=messages, **kw)


def test_chat_non_stream_and_stream_agree(gw: Gateway) -> None:
    raw = chat(gw, "smol", SHORT, max_tokens=24, temperature=0)
    assert raw.headers["x-lkn-model"] == "smol"
    full = raw.parse()
    text = full.choices[0].message.content
    assert text and full.usage.completion_tokens > 0
    stream = gw.client().chat.completions.create(model="smol-alias", messages=SHORT,
                                                 max_tokens=24, temperature=0, stream=True)
    parts = [c.choices[0].delta.content for c in stream
             if c.choices and c.choices[0].delta.content]
    assert len(parts) > 3
    assert "".join(parts) == text


def test_completions_and_models(gw: Gateway) -> None:
    r = gw.client().completions.create(model="smol", prompt="The capital of France is",
                                       max_tokens=8, temperature=0)
    assert r.choices[0].text.strip()
    ids = [m.id for m in gw.client().models.list().data]
    assert ids == ["smol", "smol-alias", "smol-b", "smol-embed"]


def test_embeddings(gw: Gateway) -> None:
    r = gw.client().embeddings.create(model="smol-embed", input=["a blue box", "a red car"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 576  # SmolLM2's n_embd
    with pytest.raises(openai.BadRequestError, match="does not serve embeddings"):
        gw.client().embeddings.create(model="smol", input="x")


def test_unknown_model_and_bad_body(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError):
        gw.client().chat.completions.create(model="gpt-9", messages=SHORT)
    r = http("POST", gw.base_url + "/v1/chat/completions", b'{"model": "smol", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["source"] == "lkn"


def test_short_prompt_gets_small_variant_long_prompt_large(gw: Gateway) -> None:
    raw = chat(gw, "smol", SHORT, max_tokens=16)
    assert raw.headers["x-lkn-variant"] == "512"
    raw = chat(gw, "smol", long_messages(600), max_tokens=16)
    assert raw.headers["x-lkn-variant"] == "2048"
    assert raw.parse().usage.prompt_tokens > 512 - 16 - 16
    # with 2048 running, a short prompt is served by it: no swap
    swaps = gw.call(lambda: gw.manager.starts)
    raw = chat(gw, "smol", SHORT, max_tokens=16)
    assert raw.headers["x-lkn-variant"] == "2048"
    assert gw.call(lambda: gw.manager.starts) == swaps


def test_prompt_too_long_for_every_variant_is_context_length_exceeded(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="smol", messages=long_messages(3000),
                                            max_tokens=16)
    assert info.value.code == "context_length_exceeded"
    assert "largest context of model 'smol'" in info.value.message


PROMPTS = [
    SHORT,
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about ünïcödé and emoji 🚀."}],
    long_messages(120),
]


@pytest.mark.parametrize("messages", PROMPTS, ids=["short", "system", "multi-turn", "long"])
def test_live_and_local_counts_equal_the_engines_usage(gw: Gateway,
                                                       messages: list[dict[str, str]]) -> None:
    usage = chat(gw, "smol", messages, max_tokens=4).parse().usage.prompt_tokens
    body = {"model": "smol", "messages": messages}
    proc = gw.call(gw.manager.ready_process, "smol")
    live = gw.call(proc.client.count_tokens, gw.state.session, proc.base_url, "chat", body)
    local = count_locally(smollm2_path(), "gguf", "chat", body)
    assert live == usage
    assert local == usage


BOUND_PROMPTS = PROMPTS + [
    [{"role": "user", "content": "数学の問題: 三角形の内角の和は？ Ответь кратко. 🙂🙃🚀"}],
    [{"role": "user", "content": "Pneumonoultramicroscopicsilicovolcanoconiosis "
                                 "antidisestablishmentarianism floccinaucinihilipilification"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"},
     {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"},
     {"role": "assistant", "content": ""}, {"role": "user", "content": "?"}],
    [{"role": "user", "content": "   spaces   and\n\nnewlines\t\ttabs  "}],
    [{"role": "user", "content": "<|im_start|>assistant text that looks special<|im_end|>"}],
]


@pytest.mark.parametrize("messages", BOUND_PROMPTS, ids=[
    "short", "system", "multi-turn", "long", "unicode", "long-words", "many-messages",
    "whitespace", "special-looking"])
def test_the_cheap_bound_is_never_below_the_engines_own_count(
        gw: Gateway, messages: list[dict[str, str]]) -> None:
    model = gw.state.cfg.resolve("smol")
    shape = gw.call(model_shape, model)
    assert shape is not None
    bound = prompt_bound("chat", {"messages": messages}, shape)
    usage = chat(gw, "smol", messages, max_tokens=2).parse().usage.prompt_tokens
    assert bound is not None and bound >= usage
    assert bound <= 10 * usage + 200  # and close enough to be worth having


def test_a_prompt_far_from_every_limit_is_decided_by_the_bound_alone(gw: Gateway) -> None:
    raw = chat(gw, "smol", SHORT, max_tokens=8)
    tokens, method = raw.headers["x-lkn-prompt-tokens"].split(";")
    assert method == "bound" and int(tokens) >= raw.parse().usage.prompt_tokens
    # near a limit the choice depends on the count: counted exactly
    raw = chat(gw, "smol", long_messages(300), max_tokens=16)
    assert raw.headers["x-lkn-prompt-tokens"].split(";")[1] in ("engine", "local")
    assert int(raw.headers["x-lkn-prompt-tokens"].split(";")[0]) == \
        raw.parse().usage.prompt_tokens


def test_raw_prompt_counts_equal_the_engines_usage(gw: Gateway) -> None:
    prompt = "Once upon a time, in a land far away, there lived"
    usage = gw.client().completions.create(model="smol", prompt=prompt, max_tokens=2).usage
    body = {"model": "smol", "prompt": prompt}
    assert count_locally(smollm2_path(), "gguf", "completions", body) == usage.prompt_tokens


def test_swap_stops_a_before_b_starts_and_spares_inflight_stream(gw: Gateway) -> None:
    chat(gw, "smol", SHORT, max_tokens=4)  # make sure A runs
    a = gw.call(gw.manager.ready_process, "smol")
    a_pid = a.pid
    first_chunk = concurrent.futures.Future()  # type: ignore[var-annotated]

    def long_stream() -> tuple[str, str | None]:
        stream = gw.client().chat.completions.create(
            model="smol", messages=SHORT, max_tokens=150, stream=True,
            extra_body={"ignore_eos": True})
        text, finish = [], None
        for c in stream:
            if not first_chunk.done():
                first_chunk.set_result(True)
            if c.choices:
                text.append(c.choices[0].delta.content or "")
                finish = c.choices[0].finish_reason or finish
        return "".join(text), finish

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        streaming = pool.submit(long_stream)
        first_chunk.result(timeout=60)
        t_b = time.monotonic()
        b = pool.submit(chat, gw, "smol-b", SHORT, max_tokens=8)
        text, finish = streaming.result(timeout=120)
        b_raw = b.result(timeout=120)
    assert finish == "length" and len(text) > 100  # the in-flight stream completed intact
    assert b_raw.headers["x-lkn-model"] == "smol-b" and b_raw.parse().choices[0].message.content
    assert not psutil.pid_exists(a_pid) or \
        psutil.Process(a_pid).status() == psutil.STATUS_ZOMBIE
    events = [(t, key, state) for t, key, state in gw.call(lambda: list(gw.manager.events))
              if t >= t_b]
    a_stopped = next(i for i, e in enumerate(events) if e[1] == a.key and e[2] == "stopped")
    b_starting = next(i for i, e in enumerate(events) if e[1] == "smol-b@1024"
                      and e[2] == "starting")
    assert a_stopped < b_starting


def test_probe_on_real_engine(gw: Gateway) -> None:
    proc = gw.call(gw.manager.ready_process, "smol") or (
        chat(gw, "smol", SHORT, max_tokens=2) and gw.call(gw.manager.ready_process, "smol"))
    result = gw.call(proc.client.probe, gw.state.session, proc.base_url, "chat",
                     {"model": "smol", "messages": SHORT}, 10, 1)
    assert len(result.positions) == 1 and len(result.positions[0]) == 10
    from lkn.homeostat.probe import normalized_entropy
    h = normalized_entropy(result.positions[0])
    assert h is not None and 0.0 <= h <= 1.0


def test_threshold_zero_is_analytic_and_verify_prompt_reaches_engine(gw: Gateway) -> None:
    # With a system message of its own (SmolLM2's template otherwise inserts a default one,
    # which the verification prompt would replace), the engine's count grows by the prompt.
    messages = [{"role": "system", "content": "Answer briefly."}, *SHORT]
    plain = chat(gw, "smol", messages, max_tokens=4, extra_body={"lkn": {"mode": "passthrough"}})
    assert plain.headers["x-lkn-mode"] == "PASSTHROUGH"
    analytic = chat(gw, "smol", messages, max_tokens=4,
                    extra_body={"lkn": {"mode": "homeostatic", "threshold": 0,
                                        "intervention": "verify_prompt"}})
    assert analytic.headers["x-lkn-mode"] == "ANALYTIC"
    assert analytic.headers["x-lkn-intervention"] == "verify_prompt"
    assert 0.0 <= float(analytic.headers["x-lkn-entropy"]) <= 1.0
    cfg = gw.state.cfg.resolve("smol").homeostasis
    extra = count_locally(smollm2_path(), "gguf", "completions",
                          {"prompt": cfg.verify_prompt}) - 1  # without its own BOS, if any
    grew = analytic.parse().usage.prompt_tokens - plain.parse().usage.prompt_tokens
    assert grew >= extra - 2  # the instruction (plus separators) reached the engine
    fluid = chat(gw, "smol", messages, max_tokens=4,
                 extra_body={"lkn": {"mode": "homeostatic", "threshold": 1}})
    assert fluid.headers["x-lkn-mode"] == "FLUID"
    assert fluid.parse().usage.prompt_tokens == plain.parse().usage.prompt_tokens


def test_passthrough_sends_no_probe(gw: Gateway) -> None:
    probes = gw.call(gw.state.metrics.probes.total)
    raw = chat(gw, "smol", SHORT, max_tokens=4, extra_headers={"x-lkn-mode": "passthrough"})
    assert raw.headers["x-lkn-mode"] == "PASSTHROUGH" and "x-lkn-entropy" not in raw.headers
    assert gw.call(gw.state.metrics.probes.total) == probes


def test_crashed_engine_is_restarted_by_the_next_request(gw: Gateway) -> None:
    chat(gw, "smol-b", SHORT, max_tokens=2)
    proc = gw.call(gw.manager.ready_process, "smol-b")
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.state is not State.FAILED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.state is State.FAILED
    assert chat(gw, "smol-b", SHORT, max_tokens=2).parse().choices[0].message.content is not None
    assert proc.state is State.READY


def test_an_engine_killed_mid_stream_costs_only_that_stream(gw: Gateway) -> None:
    """Issue #25's sequence, three times: the next request, sent the moment the broken stream
    ends, is answered by a restarted engine (not a 502 from the dead one, not a crash loop)."""
    ask = [{"role": "user", "content": "Count from one to fifty."}]
    chat(gw, "smol-b", SHORT, max_tokens=1)
    for _ in range(3):
        proc = gw.call(gw.manager.ready_process, "smol-b")
        assert proc is not None
        pid, killed = proc.pid, False
        try:
            for chunk in gw.client().chat.completions.create(
                    model="smol-b", messages=ask, max_tokens=200, stream=True):
                if not killed and chunk.choices and chunk.choices[0].delta.content:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
        except openai.APIError as exc:  # the broken stream's error event, lkn's own
            assert isinstance(exc.body, dict)
            assert (exc.body["source"], exc.body["code"]) == ("lkn", "upstream_error")
        assert killed
        raw = chat(gw, "smol-b", SHORT, max_tokens=2)
        assert raw.http_response.status_code == 200
        assert raw.parse().choices[0].message.content is not None
        again = gw.call(gw.manager.ready_process, "smol-b")
        assert again is not None and again.pid != pid


def test_sigterm_to_lkn_leaves_no_engine_behind(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.lua"
    cfg.write_text(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = {lua_str(str(tmp_path))},
           engine_port_range = {{ 20700, 20799 }} }}
models = {{ {{ name = "smol", model_file = {lua_str(smollm2_path())}, ctx_size = 512,
              gpu_layers = 0, args = {{ "--threads", 1 }} }} }}
""")
    with lkn_daemon(cfg, port, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as (lkn, client):
        client.chat.completions.create(model="smol", messages=SHORT, max_tokens=2)
        engines = [p for p in psutil.Process(lkn.pid).children(recursive=True)]
        assert any("llama-server" in " ".join(p.cmdline()) for p in engines)
        lkn.send_signal(signal.SIGTERM)
        assert lkn.wait(60) == 0
        gone, alive = psutil.wait_procs(engines, timeout=5)
        assert not alive
        assert "shutting down" in lkn.stdout.read().decode()


def test_json_error_from_engine_after_lkn_validation(gw: Gateway) -> None:
    # a field llama-server itself rejects: relayed with the engine's status and marker
    r = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "smol", "messages": SHORT, "top_logprobs": 3}))
    assert r.status_code == 400
    assert r.headers["x-lkn-error-source"] == "engine"
    assert "logprobs" in r.json()["error"]["message"]


def test_an_idle_engine_unloads_itself_and_the_next_request_starts_it(
        tmp_path: Path, gateway_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="lkn.manager")
    gw: Gateway = gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))}, idle_unload_s = 1 }}
models = {{ {{ name = "smol", model_file = {lua_str(smollm2_path())}, gpu_layers = 0,
              ctx_size = 512, default_max_tokens = 8, args = {{ "--threads", 1 }} }} }}
"""))
    assert chat(gw, "smol", SHORT, max_tokens=2).parse().choices
    proc = gw.call(gw.manager.ready_process, "smol")
    pid = proc.pid
    deadline = time.monotonic() + 15
    while proc.state is not State.STOPPED and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.state is State.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "stopping smol@512 (idle for 1s)" in caplog.text
    assert chat(gw, "smol", SHORT, max_tokens=2).parse().choices  # started again
    assert gw.call(gw.manager.ready_process, "smol").pid != pid
