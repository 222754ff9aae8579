"""Thinking through the gateway, with the openai SDK against a fake llama-server that answers
with scripted raw text (harmony and <think>): what the client gets and what reaches the engine."""
from __future__ import annotations

import http.client as http_client
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.llamacpp import LlamaCppEngine
from lkn.engines.sglang import SGLangEngine
from tests.conftest import FAKE_SGLANG, Gateway, http, lua_str, make_wrapper, read_until, write_config
from tests.fakes.hf_model import make_hf_model_dir

MSG = [{"role": "user", "content": "What is 2 + 2?"}]
HARMONY = ("<|channel|>analysis<|message|>The user asks 2 + 2. That is 4.<|end|>"
           "<|start|>assistant<|channel|>commentary<|message|>Computing. <|end|>"
           "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.")
HARMONY_ANALYSIS = "The user asks 2 + 2. That is 4."


def setup(tmp_path: Path, fake_binary: str, gateway_factory: Any, text: str, *,
          reasoning: str = "lkn", args: str = "", extra: str = "") -> tuple[Gateway, Path]:
    answer, capture = tmp_path / "answer.txt", tmp_path / "capture.jsonl"
    answer.write_text(text)
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "m", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    vram_mb = 100, reasoning = "{reasoning}", {extra}
    args = {{ "--fake-text", {lua_str(str(answer))}, "--fake-capture", {lua_str(str(capture))},
             {args} }} }},
}}
""")
    return gateway_factory(cfg), capture


def sent(capture: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capture.read_text().splitlines()] \
        if capture.exists() else []


def streamed(gw: Gateway, model: str = "m", **kw: Any) -> tuple[str, str, list[str], Any]:
    stream = gw.client().chat.completions.create(model=model, messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}, **kw)
    reasoning, content, finish, usage = [], [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            reasoning.append(getattr(c.delta, "reasoning_content", None) or "")
            content.append(c.delta.content or "")
            if c.finish_reason:
                finish.append(c.finish_reason)
    return "".join(reasoning), "".join(content), finish, usage


def test_harmony_split_by_lkn_whole_and_streamed(tmp_path: Path, fake_binary: str,
                                                 gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, HARMONY)
    full = gw.client().chat.completions.create(model="m", messages=MSG)
    message = full.choices[0].message
    assert message.reasoning_content == HARMONY_ANALYSIS
    assert message.content == "Computing. 2 + 2 = 4."
    assert full.choices[0].finish_reason == "stop"
    # the fake's tokenizer counts words
    assert full.usage.completion_tokens_details.reasoning_tokens == 9
    reasoning, content, finish, usage = streamed(gw)
    assert (reasoning, content) == (message.reasoning_content, message.content)
    assert finish == ["stop"]
    assert usage.completion_tokens_details.reasoning_tokens == 9
    for body in sent(capture):
        assert body["reasoning_format"] == "none"  # the engine must not split for lkn


def test_client_gone_mid_split_stream_closes_the_upstream(tmp_path: Path, fake_binary: str,
                                                         gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, "<think>" + "hmm " * 200,
                  args='"--fake-token-delay-s", 0.02')
    conn = http_client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"model": "m", "messages": MSG, "stream": True}))
    resp = conn.getresponse()
    read_until(resp, b'"reasoning_content"')
    resp.close()
    conn.close()
    proc = gw.call(gw.manager.processes)[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (gw.call(gw.manager.in_flight)
                                           or "client went away" not in proc.logs.tail(50)):
        time.sleep(0.05)
    assert gw.call(gw.manager.in_flight) == 0
    assert "fake: client went away mid-stream" in proc.logs.tail(50)


def test_include_channels_and_separate_thinking_false(tmp_path: Path, fake_binary: str,
                                                      gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, HARMONY)
    full = gw.client().chat.completions.create(
        model="m", messages=MSG, extra_body={"include_channels": ["analysis", "commentary"]})
    assert full.choices[0].message.channels == {"analysis": HARMONY_ANALYSIS,
                                                "commentary": "Computing. "}
    assert full.usage.completion_tokens_details.channel_tokens == {"analysis": 9,
                                                                   "commentary": 1}
    stream = gw.client().chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True},
        extra_body={"include_channels": ["commentary"]})
    chunks = list(stream)
    parts = [c.choices[0].delta.channels for c in chunks
             if c.choices and getattr(c.choices[0].delta, "channels", None)]
    assert len(parts) > 1 and all(set(p) == {"commentary"} for p in parts)
    assert "".join(p["commentary"] for p in parts) == "Computing. "
    assert chunks[-1].usage.completion_tokens_details.channel_tokens == {"commentary": 1}
    raw = gw.client().chat.completions.create(model="m", messages=MSG,
                                              extra_body={"separate_thinking": False})
    assert raw.choices[0].message.content == HARMONY
    assert getattr(raw.choices[0].message, "reasoning_content", None) is None
    reasoning, content, _, _ = streamed(gw, extra_body={"separate_thinking": False})
    assert (reasoning, content) == ("", HARMONY)


def test_template_that_opens_think_is_detected(tmp_path: Path, fake_binary: str,
                                               gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, "Let me add.\n</think>\n\n4",
                  args='"--fake-opens-think"')
    message = gw.client().chat.completions.create(model="m", messages=MSG).choices[0].message
    assert (message.reasoning_content, message.content) == ("Let me add.", "4")
    assert streamed(gw)[:2] == ("Let me add.", "4")


def test_reasoning_effort_reaches_the_engine_and_lkn_fields_do_not(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "<think>x</think>y")
    gw.client().chat.completions.create(model="m", messages=MSG, extra_body={
        "reasoning": "high", "separate_thinking": True, "include_channels": ["final"],
        "developer_instructions": "Answer in French."})
    [body] = sent(capture)
    assert body["messages"] == [{"role": "system", "content": "Answer in French."}, *MSG]
    assert body["reasoning_effort"] == "high"
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    assert not {"reasoning", "separate_thinking", "include_channels",
                "developer_instructions"} & set(body)


def test_engine_mode_passes_the_engines_answer_through(tmp_path: Path, fake_binary: str,
                                                       gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "<think>x</think>y",
                        reasoning="engine")
    message = gw.client().chat.completions.create(model="m", messages=MSG).choices[0].message
    assert message.content == "<think>x</think>y"  # this fake never splits
    assert "reasoning_format" not in sent(capture)[0]


def test_invalid_schema_is_400_before_any_engine_starts(tmp_path: Path, fake_binary: str,
                                                        gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "{}")
    with gw.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MSG, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "obj"}}})
    assert info.value.body["param"] == "response_format.json_schema.schema"
    assert gw.call(lambda: gw.manager.starts) == 0 and sent(capture) == []
    r = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": MSG, "response_format": {"type": "json_object"}}))
    assert r.status_code == 200
    assert sent(capture)[0]["response_format"] == {"type": "json_object"}


def test_homeostat_thinks_only_for_analytic_requests(tmp_path: Path, fake_binary: str,
                                                     gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "<think>hm</think>ok",
                        extra='homeostasis = { mode = "homeostatic", '
                              'intervention = "reasoning" },')
    analytic = gw.client().chat.completions.with_raw_response.create(
        model="m", messages=MSG, extra_body={"lkn": {"threshold": 0}})
    fluid = gw.client().chat.completions.with_raw_response.create(
        model="m", messages=MSG, extra_body={"lkn": {"threshold": 1}})
    assert analytic.headers["x-lkn-mode"] == "ANALYTIC"
    assert fluid.headers["x-lkn-mode"] == "FLUID"
    for raw in (analytic, fluid):  # a clean answer either way
        assert raw.parse().choices[0].message.content == "ok"
    answers = [b for b in sent(capture) if b.get("max_tokens") != 1]
    assert answers[0]["chat_template_kwargs"]["enable_thinking"] is True
    assert answers[0]["reasoning_effort"] == "high"
    assert answers[1]["chat_template_kwargs"] == {"enable_thinking": False}


def test_sglang_without_a_parser_is_split_by_lkn_with_its_templates_open_think(
        tmp_path: Path, gateway_factory: Any) -> None:
    hf_dir = make_hf_model_dir(tmp_path / "hf")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    config["chat_template"] += ("{% if add_generation_prompt %}{% if enable_thinking is false %}"
                                "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    answer = tmp_path / "answer.txt"
    answer.write_text("the answer is paris .\n</think>\n\nparis")
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "sg", engine = "sglang", model_file = {lua_str(str(hf_dir))},
  python = {lua_str(make_wrapper(tmp_path, FAKE_SGLANG, "fake-python"))}, ctx_size = 4096,
  args = {{ "--fake-text", {lua_str(str(answer))} }} }} }}
""")
    assert cfg.models[0].reasoning == "lkn"
    gw = gateway_factory(cfg)
    full = gw.client().chat.completions.create(model="sg", messages=MSG)
    message = full.choices[0].message
    assert (message.reasoning_content, message.content) == ("the answer is paris .", "paris")
    # counted by the fake's word-level tokenizer through SGLang's /tokenize
    assert full.usage.completion_tokens_details.reasoning_tokens == 5
    assert streamed(gw, model="sg")[:2] == ("the answer is paris .", "paris")
    # with thinking off the template closes the block itself: the answer is all content
    message = gw.client().chat.completions.create(
        model="sg", messages=MSG, extra_body={"reasoning_effort": "none"}).choices[0].message
    assert message.content == "the answer is paris .\n</think>\n\nparis"


def test_engine_flags_follow_the_reasoning_mode() -> None:
    def llama(mode: str) -> list[str]:
        m = ModelConfig(name="m", engine="llamacpp", reasoning=mode, binary="llama-server",
                        variants=(VariantConfig(512, "/m.gguf", 0),))
        return LlamaCppEngine(m, m.variants[0]).argv(1)

    assert "--reasoning-format" not in llama("engine")
    for mode in ("lkn", "none"):
        argv = llama(mode)
        assert argv[argv.index("--reasoning-format") + 1] == "none"

    def sglang(mode: str) -> list[str]:
        m = ModelConfig(name="m", engine="sglang", reasoning=mode, reasoning_parser="qwen3",
                        python="py", variants=(VariantConfig(512, "/m", 0),))
        return SGLangEngine(m, m.variants[0]).argv(1)

    argv = sglang("engine")
    assert argv[argv.index("--reasoning-parser") + 1] == "qwen3"
    assert "--reasoning-parser" not in sglang("lkn")
