"""The homeostat through the gateway, against a capturing fake engine: what reaches the engine in
each mode, and that a failing or slow probe never fails the request."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.config import DEFAULT_VERIFY_PROMPT
from tests.conftest import Gateway, lua_str, write_config

MSG = [{"role": "user", "content": "is a cat bigger than a mouse?"}]


def setup(tmp_path: Path, fake_binary: str, gateway_factory: Any, *, args: str = "",
          homeostasis: str = 'mode = "homeostatic", threshold = 0.5, '
                             'intervention = "verify_prompt"') -> tuple[Gateway, Path]:
    capture = tmp_path / "capture.jsonl"
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))}, {args} }},
    homeostasis = {{ {homeostasis} }} }},
  {{ name = "large", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))} }} }},
}}
""")
    return gateway_factory(cfg), capture


def captured(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def answers(path: Path) -> list[dict[str, Any]]:
    return [b for b in captured(path) if b.get("max_tokens") != 1]


def probes(path: Path) -> list[dict[str, Any]]:
    return [b for b in captured(path) if b.get("max_tokens") == 1]


def test_high_entropy_is_analytic_and_only_the_real_request_gets_the_prompt(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, args='"--fake-entropy", "high"')
    raw = gw.client().chat.completions.with_raw_response.create(
        model="small", messages=MSG, max_tokens=5, temperature=0.3)
    assert raw.headers["x-lkn-mode"] == "ANALYTIC"
    assert raw.headers["x-lkn-entropy"] == "1.0000"
    assert raw.headers["x-lkn-intervention"] == "verify_prompt"
    [probe] = probes(capture)
    assert probe["messages"] == MSG and probe["top_logprobs"] == 10 and probe["logprobs"] is True
    assert probe["temperature"] == 0.3  # the request's own sampling settings
    assert "stream" not in probe and probe["cache_prompt"] is True
    [answer] = answers(capture)
    assert answer["messages"] == [{"role": "system", "content": DEFAULT_VERIFY_PROMPT}, *MSG]
    assert "lkn" not in answer  # lkn's own field never reaches the engine


def test_low_entropy_is_fluid_and_continues_from_the_probe(tmp_path: Path, fake_binary: str,
                                                          gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, args='"--fake-entropy", "low"')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert raw.headers["x-lkn-mode"] == "FLUID"
    assert float(raw.headers["x-lkn-entropy"]) < 0.1
    assert raw.headers["x-lkn-probe-cost"].endswith("decode=1, kept=1")
    # the request unchanged, then the probe's token as the answer's start
    assert answers(capture)[0]["messages"] == [*MSG, {"role": "assistant", "content": " w0"}]
    assert raw.parse().choices[0].message.content == "".join(f" w{i}" for i in range(8))


def test_passthrough_sends_no_probe(tmp_path: Path, fake_binary: str,
                                    gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, homeostasis='mode = "passthrough"')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert raw.headers["x-lkn-mode"] == "PASSTHROUGH"
    assert probes(capture) == [] and len(answers(capture)) == 1


@pytest.mark.parametrize("args, extra", [
    ('"--fake-probe-error"', ""),                                    # engine error
    ('"--fake-probe-delay-s", 3', "probe_timeout_s = 0.2, "),        # over its time budget
])
def test_failed_probe_degrades_to_passthrough(tmp_path: Path, fake_binary: str,
                                              gateway_factory: Any, args: str,
                                              extra: str) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, args=args,
                        homeostasis=f'mode = "homeostatic", {extra}intervention = "verify_prompt"')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert raw.headers["x-lkn-mode"] == "PASSTHROUGH" and "x-lkn-entropy" not in raw.headers
    assert raw.parse().choices[0].message.content  # the request itself succeeded
    assert answers(capture)[-1]["messages"] == MSG
    metrics = gw.state.metrics
    assert gw.call(metrics.probes.value, "small", "PASSTHROUGH") == 1


def test_escalate_serves_with_the_stronger_model(tmp_path: Path, fake_binary: str,
                                                 gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, args='"--fake-entropy", "high"',
                  homeostasis='mode = "homeostatic", threshold = 0.5, intervention = "escalate", '
                              'escalate_to = "large"')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert raw.headers["x-lkn-model"] == "large"
    assert raw.headers["x-lkn-escalated-from"] == "small"
    assert raw.parse().model == "large"  # the engine saw the escalated model's name


def test_reasoning_turns_thinking_on(tmp_path: Path, fake_binary: str,
                                     gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, args='"--fake-entropy", "high"',
                        homeostasis='mode = "homeostatic", threshold = 0.5, '
                                    'intervention = "reasoning", reasoning_effort = "medium"')
    gw.client().chat.completions.create(model="small", messages=MSG)
    [answer] = answers(capture)
    assert answer["reasoning_effort"] == "medium"
    assert answer["chat_template_kwargs"] == {"enable_thinking": True,
                                              "reasoning_effort": "medium"}


def test_raw_prompt_is_prefixed_and_header_overrides(tmp_path: Path, fake_binary: str,
                                                     gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, args='"--fake-entropy", "high"',
                        homeostasis='mode = "passthrough", intervention = "verify_prompt"')
    client = gw.client()
    raw = client.completions.with_raw_response.create(
        model="small", prompt="2 + 2 =", extra_headers={"x-lkn-mode": "homeostatic"},
        extra_body={"lkn": {"threshold": 0.2}})
    assert raw.headers["x-lkn-mode"] == "ANALYTIC"
    assert probes(capture)[0]["logprobs"] == 10  # integer logprobs on /v1/completions
    assert answers(capture)[-1]["prompt"] == f"{DEFAULT_VERIFY_PROMPT}\n\n2 + 2 ="
    bad = client.chat.completions.with_raw_response
    with pytest.raises(openai.BadRequestError, match="lkn mode must be one of"):
        bad.create(model="small", messages=MSG, extra_headers={"x-lkn-mode": "sometimes"})
