"""A kept request continues from its probe's answer (issue 24), on a real llama-server serving
SmolLM2-135M: at temperature 0 the answer is the one an unprobed request gets, whole or
streamed, chat or completions, with the same usage; the engine decodes each token once (its
own counters say so); a probe that wrote the whole answer is the answer, with no second call."""
from __future__ import annotations

import urllib.request
from typing import Any

import pytest

from tests.conftest import Gateway, lua_str, smollm2_path, write_config

pytestmark = pytest.mark.engine

PROBE_TOKENS = 6
STORY = [{"role": "user", "content": "Write a short story about a cat named Tom."}]
FLUID = {"lkn": {"mode": "homeostatic", "threshold": 1}}   # the probe always lets it through
PLAIN = {"lkn": {"mode": "passthrough"}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("keep")
    lua = f"""
server = {{ log_dir = {lua_str(str(tmp / 'logs'))}, engine_start_timeout_s = 120 }}
models = {{
  {{ name = "smol", model_file = {lua_str(smollm2_path())}, gpu_layers = 0, ctx_size = 1024,
    default_max_tokens = 64, args = {{ "--threads", 1, "--metrics" }},
    homeostasis = {{ mode = "homeostatic", intervention = "none", top_k = 5,
                    probe_tokens = {PROBE_TOKENS}, threshold = 1 }} }},
}}
"""
    gateway = Gateway(write_config(tmp, lua))
    yield gateway
    gateway.stop()


def predicted(gw: Gateway) -> float:
    """The engine's own count of the tokens it generated (llama-server's /metrics)."""
    proc = gw.call(gw.manager.ready_process, "smol")
    req = urllib.request.Request(proc.base_url + "/metrics", headers=proc.client.headers())
    with urllib.request.urlopen(req, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("llamacpp:tokens_predicted_total"):
                return float(line.split()[-1])
    raise AssertionError("llama-server's /metrics has no tokens_predicted_total")


def test_a_kept_chat_answer_is_the_unprobed_one_and_each_token_is_generated_once(
        gw: Gateway) -> None:
    client = gw.client()
    plain = client.chat.completions.with_raw_response.create(
        model="smol", messages=STORY, max_tokens=40, temperature=0, extra_body=PLAIN).parse()
    before = predicted(gw)
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=STORY, max_tokens=40, temperature=0, extra_body=FLUID)
    kept = raw.parse()
    assert raw.headers["x-lkn-mode"] == "FLUID"
    assert raw.headers["x-lkn-probe-cost"].endswith(f"decode={PROBE_TOKENS}, "
                                                    f"kept={PROBE_TOKENS}")
    assert predicted(gw) - before == plain.usage.completion_tokens  # not 40 + the probe's 6
    assert kept.choices[0].message.content == plain.choices[0].message.content
    assert kept.choices[0].finish_reason == plain.choices[0].finish_reason
    assert (kept.usage.prompt_tokens, kept.usage.completion_tokens) == \
        (plain.usage.prompt_tokens, plain.usage.completion_tokens)


def test_a_kept_stream_starts_with_the_probes_text_and_equals_the_unprobed_one(
        gw: Gateway) -> None:
    client = gw.client()

    def stream(extra: dict[str, Any]) -> tuple[list[Any], Any]:
        chunks = list(client.chat.completions.create(
            model="smol", messages=STORY, max_tokens=30, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra))
        return chunks, chunks[-1].usage

    plain, plain_usage = stream(PLAIN)
    kept, kept_usage = stream(FLUID)
    text = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            for chunks in (plain, kept)]
    assert text[0] == text[1]
    assert len({c.id for c in kept}) == 1  # one answer, one id
    roles = [c for c in kept if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1 and kept.index(roles[0]) == 0
    first = next(c.choices[0].delta.content for c in kept
                 if c.choices and c.choices[0].delta.content)
    assert len(first) > len(text[0].split()[0])  # the probe's tokens come as one event
    assert (kept_usage.prompt_tokens, kept_usage.completion_tokens) == \
        (plain_usage.prompt_tokens, plain_usage.completion_tokens)
    finishes = [c.choices[0].finish_reason for c in kept if c.choices]
    assert finishes[-1] == "length" and finishes.count("length") == 1


def test_kept_completions_continue_from_the_probes_very_tokens(gw: Gateway) -> None:
    client = gw.client()
    ask = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**ask, extra_body=PLAIN)
    kept = client.completions.create(**ask, extra_body=FLUID)
    assert kept.choices[0].text == plain.choices[0].text
    assert kept.usage.completion_tokens == plain.usage.completion_tokens == 24
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        **ask, stream=True, extra_body=FLUID) if c.choices)
    assert streamed == plain.choices[0].text


def test_a_probe_that_wrote_the_whole_answer_is_the_answer(gw: Gateway) -> None:
    client = gw.client()
    plain = client.chat.completions.create(model="smol", messages=STORY, max_tokens=4,
                                           temperature=0, extra_body=PLAIN)
    before = predicted(gw)
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=STORY, max_tokens=4, temperature=0, extra_body=FLUID)
    kept = raw.parse()
    assert predicted(gw) - before == 4  # the probe's four tokens, nothing generated again
    assert raw.headers["x-lkn-probe-cost"].endswith("decode=4, kept=4")
    assert kept.choices[0].message.content == plain.choices[0].message.content
    assert kept.choices[0].logprobs is None  # asked for by lkn, not by the client
    assert kept.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(model="smol", messages=STORY, max_tokens=4,
                                                 temperature=0, stream=True, extra_body=FLUID))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        plain.choices[0].message.content
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage


def test_requests_that_shape_the_answer_are_generated_again(gw: Gateway) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="smol", messages=STORY, max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=2, extra_body=FLUID)
    assert raw.headers["x-lkn-probe-cost"].endswith("kept=0")
    answer = raw.parse()
    assert len(answer.choices[0].logprobs.content) == answer.usage.completion_tokens == 12
    metrics = gw.state.metrics
    assert gw.call(lambda: metrics.probe_tokens.value("smol", "kept")) > 0
