"""Token usage through the gateway: lkn asks a stream's engine for usage, counts it, and
strips the usage chunk again when the client did not ask for it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, http, lua_str, write_config

MSG = [{"role": "user", "content": "Say something."}]
ANSWER = "one two three four five six"  # the fake counts 6 completion tokens, 5 prompt tokens


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, gateway_factory: Any) -> Gateway:
    answer, capture = tmp_path / "answer.txt", tmp_path / "capture.jsonl"
    answer.write_text(ANSWER)
    return gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "m", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-text", {lua_str(str(answer))},
             "--fake-capture", {lua_str(str(capture))} }} }},
}}
"""))


def metric(gw: Gateway, name: str) -> float:
    text = http("GET", gw.base_url + "/metrics").text
    found = re.search(rf'^{name}{{(?:key="",)?model="m"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def stream_chunks(gw: Gateway, **kw: Any) -> list[Any]:
    return list(gw.client().chat.completions.create(model="m", messages=MSG, stream=True, **kw))


def test_stream_without_include_usage_gets_no_usage_chunk_but_is_counted(gw: Gateway) -> None:
    chunks = stream_chunks(gw)
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert metric(gw, "lkn_prompt_tokens_total") == 5
    assert metric(gw, "lkn_completion_tokens_total") == 6
    assert metric(gw, "lkn_tokens_per_second_count") == 1


def test_stream_with_include_usage_keeps_its_usage_chunk(gw: Gateway) -> None:
    chunks = stream_chunks(gw, stream_options={"include_usage": True})
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 6
    assert metric(gw, "lkn_completion_tokens_total") == 6


def test_whole_answer_usage_is_counted(gw: Gateway) -> None:
    answer = gw.client().chat.completions.create(model="m", messages=MSG)
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    assert metric(gw, "lkn_prompt_tokens_total") == 5
    assert metric(gw, "lkn_completion_tokens_total") == 6
    assert metric(gw, "lkn_tokens_per_second_count") == 1
