"""The SGLang engine against a fake SGLang that follows SGLang's API shapes, run as a real child
process in place of ``python -m sglang.launch_server``."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from lkn.config import ConfigError, ModelConfig, VariantConfig
from lkn.engines.llamacpp import LlamaCppEngine
from lkn.engines.process import EngineStartError, State
from lkn.engines.sglang import SGLangEngine
from lkn.homeostat.probe import normalized_entropy
from lkn.engines.tokens import count_locally
from tests.conftest import FAKE_SGLANG, Gateway, http, lua_str, write_config
from tests.sglang_support import (MSG, dead, fake_python, gw, hf_dir,  # noqa: F401
                                  sg_process)


def test_argv_follows_sglang_launch_server() -> None:
    model = ModelConfig(name="qwen", engine="sglang", python="/opt/sgl/bin/python",
                        mem_fraction_static=0.7, sleep_when_idle_s=60,
                        variants=(VariantConfig(8192, "/models/qwen", 999, args=("--tp", "1")),))
    assert SGLangEngine(model, model.variants[0]).argv(30001) == [
        "/opt/sgl/bin/python", "-m", "sglang.launch_server", "--model-path", "/models/qwen",
        "--host", "127.0.0.1", "--port", "30001", "--context-length", "8192",
        "--served-model-name", "qwen", "--mem-fraction-static", "0.7",
        "--enable-memory-saver", "--enable-weights-cpu-backup", "--tp", "1"]


def test_llama_servers_repeat_penalty_is_sglangs_repetition_penalty() -> None:
    model = ModelConfig(name="qwen", engine="sglang", python="/opt/sgl/bin/python",
                        variants=(VariantConfig(8192, "/models/qwen", 999),))
    client = SGLangEngine(model, model.variants[0])
    sent = client.prepare_body("chat", {"model": "x", "repeat_penalty": 1.1, "top_k": 4})
    assert sent == {"model": "qwen", "repetition_penalty": 1.1, "top_k": 4}
    both = client.prepare_body("chat", {"repeat_penalty": 1.1, "repetition_penalty": 1.3})
    assert both["repetition_penalty"] == 1.3 and "repeat_penalty" not in both


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


def first_position_entropy(temperature: float, k: int = 10) -> float:
    """The fake's first-position top-k (logits -2i) after temperature scaling."""
    logits = [-2.0 * i / temperature for i in range(k)]
    total = math.log(sum(math.exp(x) for x in logits))
    return normalized_entropy([x - total for x in logits])


HOMEOSTATIC = {"lkn": {"mode": "homeostatic", "threshold": 0.5}}


def test_chat_probe_reads_chat_logprobs(gw: Gateway) -> None:
    r = gw.client().chat.completions.with_raw_response.create(
        model="sg", messages=MSG, max_tokens=3, extra_body=HOMEOSTATIC)
    assert float(r.headers["x-lkn-entropy"]) == pytest.approx(first_position_entropy(1.0),
                                                              abs=1e-4)
    assert r.headers["x-lkn-mode"] == "FLUID"


def test_a_kept_chat_request_continues_the_probes_answer_on_sglang(gw: Gateway) -> None:
    # continue_final_message: SGLang renders the probe's text unclosed and generates on
    plain = gw.client().chat.completions.create(model="sg", messages=MSG, max_tokens=5,
                                                extra_body={"lkn": {"mode": "passthrough"}})
    r = gw.client().chat.completions.with_raw_response.create(
        model="sg", messages=MSG, max_tokens=5, extra_body=HOMEOSTATIC)
    assert r.headers["x-lkn-mode"] == "FLUID"
    assert r.headers["x-lkn-probe-cost"].endswith("decode=1, kept=1")
    usage = r.parse().usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (plain.usage.prompt_tokens, 5)


def test_chat_probe_measures_at_the_answers_default_temperature(gw: Gateway,
                                                                hf_dir: Path) -> None:
    # SGLang's chat endpoint fills an unset temperature from generation_config.json, /generate
    # does not; the fake reads the file when it starts, on the first request.
    (hf_dir / "generation_config.json").write_text(json.dumps({"temperature": 0.5}))
    r = gw.client().chat.completions.with_raw_response.create(
        model="sg", messages=MSG, max_tokens=3, extra_body=HOMEOSTATIC)
    assert float(r.headers["x-lkn-entropy"]) == pytest.approx(first_position_entropy(0.5),
                                                              abs=1e-4)


@pytest.mark.parametrize("prompt, extra", [
    ([5, 6, 7, 8], {}),  # token ids: /tokenize takes only strings, /generate takes input_ids
    ("hello there", {"top_k": 40.0, "seed": 7.0}),  # whole-number floats for integer fields
])
def test_completions_probe_through_generate(gw: Gateway, prompt: Any,
                                            extra: dict[str, Any]) -> None:
    r = gw.client().completions.with_raw_response.create(
        model="sg", prompt=prompt, max_tokens=3, extra_body={**extra, **HOMEOSTATIC})
    assert r.headers["x-lkn-mode"] == "FLUID"
    assert float(r.headers["x-lkn-entropy"]) == pytest.approx(first_position_entropy(1.0),
                                                              abs=1e-4)
    assert r.parse().choices[0].text == " w0 w1 w2"


async def test_logprob_text_only_when_asked(hf_dir: Path, fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session)
        await proc.ensure_ready()
        try:
            payload = {"text": "hello", "sampling_params": {"max_new_tokens": 1},
                       "return_logprob": True, "top_logprobs_num": 2}
            async with session.post(proc.base_url + "/generate", json=payload,
                                    headers=proc.client.headers()) as resp:
                meta = (await resp.json())["meta_info"]
            assert [t[2] for t in meta["output_top_logprobs"][0]] == [None, None]
            result = await proc.client.probe(session, proc.base_url, "completions",
                                             {"prompt": "hello"}, 3, 2)
            assert result.tokens == ("c0", "c0") and [len(p) for p in result.positions] == [3, 3]
        finally:
            await proc.stop()


@pytest.mark.parametrize("gw", [{"sg_args": '"--chat-template", "chatml"'}], indirect=True)
def test_count_with_named_chat_template_and_trailing_assistant(gw: Gateway) -> None:
    # an explicit add_generation_prompt is a 400 with a non-Jinja template
    # (serving_tokenize.py), so lkn leaves it out and gets the chat path's own count
    client = gw.client()
    for messages in (MSG, [*MSG, {"role": "assistant", "content": "paris ."}]):
        usage = client.chat.completions.create(model="sg", messages=messages,
                                               max_tokens=2).usage
        proc = gw.call(gw.manager.ready_process, "sg")
        body = {"model": "sg", "messages": messages}
        assert gw.call(proc.client.count_tokens, gw.state.session, proc.base_url, "chat",
                       body) == usage.prompt_tokens


def test_first_chat_chunk_carries_only_the_role(gw: Gateway) -> None:
    r = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "sg", "messages": MSG, "max_tokens": 3, "stream": True}))
    chunks = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    first = chunks[0]["choices"][0]["delta"]  # role only: no text yet (lkn splits thinking
    assert first["role"] == "assistant"       # here, so it re-emits the delta without "")
    assert not first.get("content") and not first.get("reasoning_content")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"]) == " w0 w1 w2"


def test_top_p_zero_is_lkns_400_before_any_engine(gw: Gateway) -> None:
    r = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "sg", "messages": MSG, "max_tokens": 2, "top_p": 0}))
    assert r.status_code == 400 and r.headers["x-lkn-error-source"] == "lkn"
    assert r.json()["error"]["param"] == "top_p"
    assert "greater than 0" in r.json()["error"]["message"]


def test_fake_rejects_unknown_flags_like_sglang(hf_dir: Path) -> None:
    out = subprocess.run([sys.executable, str(FAKE_SGLANG), "-m", "sglang.launch_server",
                          "--model-path", str(hf_dir), "--no-such-flag"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr


def test_ctx_above_model_config_is_a_config_error(tmp_path: Path, hf_dir: Path) -> None:
    def load(model: str) -> Any:
        return write_config(tmp_path, f'models = {{ {{ name = "sg", engine = "sglang", '
                                      f'model_file = {lua_str(str(hf_dir))}, {model} }} }}')

    with pytest.raises(ConfigError) as info:
        load("ctx_size = 8192")
    assert str(info.value).startswith("models[1].ctx_size: 8192 is longer than the 4096 "
                                      "tokens the model's config.json allows")
    with pytest.raises(ConfigError, match=r"^models\[1\]\.variants\[2\]\.ctx_size: 4097 "):
        load("variants = { { ctx_size = 4096 }, { ctx_size = 4097 } }")
    allowed = load('ctx_size = 8192, env = { SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN = "1" }')
    assert allowed.models[0].variants[0].ctx_size == 8192


async def test_fake_refuses_ctx_above_model_config(hf_dir: Path, fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, ctx=8192)
        with pytest.raises(EngineStartError, match="exited with code 1"):
            await proc.ensure_ready()
        # the engine's words are for admins (/status), not in the error clients may see
        assert "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN" in proc.describe()["log_tail"]
        await proc.stop()
        proc = await sg_process(hf_dir, fake_python, session, ctx=8192,
                                env=(("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1"),))
        await proc.ensure_ready()
        assert proc.client.effective_ctx == 8192
        await proc.stop()


@pytest.mark.parametrize("engine, model_grace, server_grace, expected", [
    ("sglang", None, 10.0, 30.0),  # drain poll + 15 s for the schedulers to free memory
    ("sglang", None, 60.0, 60.0),
    ("sglang", 5.0, 10.0, 5.0),  # the model's own stop_grace_s wins
    ("llamacpp", None, 10.0, 10.0),
])
def test_stop_grace_per_engine(engine: str, model_grace: float | None, server_grace: float,
                               expected: float) -> None:
    model = ModelConfig(name="m", engine=engine, stop_grace_s=model_grace,
                        variants=(VariantConfig(4096, "/models/m", 999),))
    cls = SGLangEngine if engine == "sglang" else LlamaCppEngine
    assert cls(model, model.variants[0]).stop_grace_s(server_grace) == expected


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
    # lkn's own per-start key comes after the model's args and wins: lkn can call its engine
    r = http("POST", gw.base_url + "/v1/chat/completions",
             json.dumps({"model": "sg", "messages": MSG, "max_tokens": 2}))
    assert r.status_code == 200, r.text
    proc = gw.call(gw.manager.ready_process, "sg")
    direct = http("GET", proc.base_url + "/v1/models",
                  headers={"Authorization": "Bearer s3cret"})
    assert direct.status_code == 401 and direct.json() == {"error": "Unauthorized"}
    assert proc.client.normalize_error(401, direct.content) == {"error": {
        "message": "Unauthorized", "type": "invalid_request_error", "param": None,
        "code": None, "source": "sglang"}}


def test_sglang_in_stream_error_becomes_clean_error_event(gw: Gateway) -> None:
    stream = gw.client().chat.completions.create(
        model="sg", messages=MSG, max_tokens=6, stream=True,
        extra_body={"fake_stream_error": True})
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert info.value.message == "scheduler aborted the request"
    assert info.value.body["source"] == "sglang"  # type: ignore[index]
