"""Keeping the probe's answer (issue 24): which requests may (a table), how the probe's answer
is read, how the answer is stitched whole and streamed, and through the gateway against the
fake engine: a continuation it refuses is generated again, streamed answers continue too."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from lkn.engines.probe_answer import ProbeResult, parse_openai
from lkn.homeostat import keep
from lkn.relay.continued import Continued
from tests.conftest import lua_str, write_config

MSG = [{"role": "user", "content": "hi"}]


def probe(text: str | None = " Paris is", finish: str | None = "length", n: int = 2,
          **kw: Any) -> ProbeResult:
    answer = {"id": "chatcmpl-probe", "created": 7, "model": "m", "object": "chat.completion",
              "choices": [{"index": 0, "finish_reason": finish, "logprobs": {"content": []},
                           "message": {"role": "assistant", "content": text}}]}
    return ProbeResult(positions=((-0.1,),) * n, tokens=(" Paris", " is")[:n], text=text,
                       token_ids=(11, 12)[:n], finish_reason=finish, prompt_tokens=10,
                       cached_tokens=3, answer=answer, **kw)


@pytest.mark.parametrize("route, body, result, reason", [
    ("chat", {"messages": MSG}, probe(), None),
    ("completions", {"prompt": "x"}, probe(), None),
    ("embeddings", {"input": "x"}, probe(), "embeddings are not generated"),
    ("chat", {"messages": MSG}, probe(text=None), "not plain text"),
    ("chat", {"messages": MSG}, probe(finish=None), "does not say why it ended"),
    ("chat", {"messages": MSG, "n": 2}, probe(), "several choices"),
    ("chat", {"messages": MSG, "n": 1}, probe(), None),
    ("chat", {"messages": MSG, "tools": [{"type": "function"}]}, probe(), "sets tools"),
    ("chat", {"messages": MSG, "tools": []}, probe(), None),
    ("chat", {"messages": MSG, "logprobs": True}, probe(), "sets logprobs"),
    ("chat", {"messages": MSG, "logprobs": False}, probe(), None),
    ("chat", {"messages": MSG, "response_format": {"type": "json_object"}}, probe(),
     "sets response_format"),
    ("completions", {"prompt": "x", "echo": True}, probe(), "sets echo"),
    ("chat", {"messages": MSG, "stop": ["is over"]}, probe(), "straddle"),
    ("chat", {"messages": MSG, "stop": "s\n"}, probe(), "straddle"),
    ("chat", {"messages": MSG, "stop": ["\n\n", "END"]}, probe(), None),
    ("chat", {"messages": MSG, "seed": 3, "temperature": 0.7}, probe(), "seeded sample"),
    ("chat", {"messages": MSG, "seed": 3, "temperature": 0}, probe(), None),
    ("chat", {"messages": MSG, "frequency_penalty": 0.5}, probe(), "frequency_penalty"),
    ("chat", {"messages": MSG, "frequency_penalty": 0}, probe(), None),
    ("completions", {"prompt": "x", "min_tokens": 4}, probe(), "min_tokens"),
    ("completions", {"prompt": ["x", "y"]}, probe(), "a batch or token-id prompt"),
    ("completions", {"prompt": [1, 2]}, probe(), "a batch or token-id prompt"),
])
def test_which_requests_keep_the_probes_answer(route: str, body: dict[str, Any],
                                               result: ProbeResult, reason: str | None) -> None:
    got = keep.why_not(route, body, result)
    assert (got is None) if reason is None else (got is not None and reason in got)


@pytest.mark.parametrize("body, result, asked, whole, left", [
    ({}, probe(finish="length", n=2), 2, False, None),            # more to come, no budget
    ({"max_tokens": 10}, probe(finish="length", n=2), 2, False, 8),
    ({"max_completion_tokens": 5}, probe(finish="length", n=2), 2, False, 3),
    ({"max_tokens": 2}, probe(finish="length", n=2), 2, True, 1),  # the budget is used up
    ({}, probe(finish="stop", n=2), 16, True, None),               # it ended on its own
    ({}, probe(finish="length", n=2), 16, True, None),             # cut short of the asked
])
def test_whole_or_continued_and_the_budget_left(body: dict[str, Any], result: ProbeResult,
                                                 asked: int, whole: bool,
                                                 left: int | None) -> None:
    assert keep.complete(body, result, asked) is whole
    assert keep.remaining(body, result) == left


def entry(token: str, raw: bytes | None = None, i: int = 1) -> dict[str, Any]:
    return {"id": i, "token": token, "bytes": list(raw if raw is not None else token.encode()),
            "logprob": -0.5, "top_logprobs": [{"token": token, "logprob": -0.5}]}


def test_the_probes_text_is_kept_only_when_its_tokens_spell_it() -> None:
    def answer(content: list[dict[str, Any]], text: Any, **message: Any) -> dict[str, Any]:
        return {"choices": [{"finish_reason": "length", "logprobs": {"content": content},
                             "message": {"content": text, **message}}],
                "usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}}}

    good = parse_openai(answer([entry("Hé", i=5), entry("!", i=6)], "Hé!"), "chat")
    assert good.text == "Hé!" and good.token_ids == (5, 6) and good.finish_reason == "length"
    assert good.decoded == 2 and good.prefilled == 5
    # a token cut inside a UTF-8 character: the text the engine shows is not what was made
    cut = parse_openai(answer([entry("H", b"H\xc3")], "H"), "chat")
    assert cut.text is None and cut.positions == ((-0.5,),)
    assert parse_openai(answer([entry("x")], "x", tool_calls=[{}]), "chat").text is None
    assert parse_openai(answer([entry("x")], "x", reasoning_content="hm"), "chat").text is None
    completions = {"choices": [{"finish_reason": "stop", "text": "ab",
                                "logprobs": {"content": [entry("a"), entry("b")]}}]}
    assert parse_openai(completions, "completions").text == "ab"
    batch = {"choices": completions["choices"] * 2}  # one choice per prompt: not one answer
    assert parse_openai(batch, "completions").text is None


def test_a_whole_answer_is_the_probes_text_then_the_continuation_once_counted() -> None:
    stitched = Continued("chat", probe(), repeated=True)
    echoed = {"choices": [{"message": {"content": " Paris is the capital."},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                        "prompt_tokens_details": {"cached_tokens": 11}}}
    out = json.loads(stitched.stitch(json.dumps(echoed).encode()))
    assert out["choices"][0]["message"]["content"] == " Paris is the capital."
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                            "prompt_tokens_details": {"cached_tokens": 3}}
    not_echoed = {"choices": [{"text": " the capital.", "finish_reason": "stop"}]}
    out = json.loads(Continued("completions", probe()).stitch(json.dumps(not_echoed).encode()))
    assert out["choices"][0]["text"] == " Paris is the capital."
    assert Continued("chat", probe()).stitch(b"not json") == b"not json"
    anew = Continued("chat", probe(), repeated=True)  # to repeat the text, and it does not
    anew.stitch(json.dumps({"choices": [{"message": {"content": "Hello!"}}]}).encode())
    assert anew.anew and not stitched.anew
    alone = json.loads(Continued("chat", probe(finish="stop")).probe_answer())
    assert alone["choices"][0]["message"]["content"] == " Paris is"
    assert "logprobs" not in alone["choices"][0]


def test_an_engine_that_does_not_repeat_the_text_loses_none_of_its_answer() -> None:
    # SGLang and llama-server's completions answer only what follows: a first piece that
    # happens to start like the probe's text is the answer's, not a repeat
    loops = probe(text=" 1, 1,")
    whole = {"choices": [{"text": " 1, 1, 2", "finish_reason": "stop"}]}
    out = json.loads(Continued("completions", loops).stitch(json.dumps(whole).encode()))
    assert out["choices"][0]["text"] == " 1, 1, 1, 1, 2"

    async def run() -> list[Any]:
        async def source() -> AsyncIterator[bytes]:
            for piece in (" 1", ",", " 2"):
                yield b"data: " + json.dumps({"choices": [{"index": 0, "text": piece}]}
                                             ).encode() + b"\n\n"
        return events(b"".join([c async for c in Continued("completions", loops)
                                .stream(source())]))

    assert "".join(e["choices"][0]["text"] for e in asyncio.run(run())) == " 1, 1, 1, 2"


def events(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]"
            for line in raw.split(b"\n\n") if line.startswith(b"data: ")]


def test_a_stream_opens_with_the_probes_text_and_goes_on_under_one_id() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "chatcmpl-2", "created": 9, "model": "m",
                                       "choices": [{"index": 0, "delta": delta,
                                                    "finish_reason": finish}]}).encode() + b"\n\n"

    upstream = [chunk({"role": "assistant", "content": None}),
                chunk({"content": " Paris is the"})[:20], chunk({"content": " Paris is the"})[20:],
                b": keepalive\n\n", chunk({"content": " capital"}), chunk({}, "stop"),
                b'data: {"id":"chatcmpl-2","choices":[],"usage":{"prompt_tokens":12,'
                b'"completion_tokens":2,"total_tokens":14}}\n\n', b"data: [DONE]\n\n"]

    async def source() -> AsyncIterator[bytes]:
        for piece in upstream:
            yield piece

    async def run() -> bytes:
        return b"".join([c async for c in Continued("chat", probe(), repeated=True)
                         .stream(source())])

    raw = asyncio.run(run())
    out = events(raw)
    assert out[-1] == "[DONE]" and b": ping" in raw
    chunks = out[:-1]
    assert {c["id"] for c in chunks} == {"chatcmpl-probe"}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert [d.get("content") for d in deltas[1:]] == [" Paris is", " the", " capital", None]
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4,
                                   "total_tokens": 14}
    whole = events(Continued("completions", probe(finish="stop")).probe_stream())
    assert whole[0]["choices"][0]["text"] == " Paris is"
    assert whole[1]["choices"][0]["finish_reason"] == "stop"
    assert whole[2]["usage"]["completion_tokens"] == 2 and whole[3] == "[DONE]"


def gateway(tmp_path: Path, fake_binary: str, gateway_factory: Any, args: str = "") -> Any:
    capture = tmp_path / "capture.jsonl"
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-capture", {lua_str(str(capture))}, "--fake-entropy", "low", {args} }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.5, intervention = "none",
                    probe_tokens = 3 }} }},
}}
""")
    return gateway_factory(cfg), capture


WHOLE = "".join(f" w{i}" for i in range(8))  # the fake's whole answer


def test_a_streamed_kept_answer_through_the_gateway(tmp_path: Path, fake_binary: str,
                                                    gateway_factory: Any) -> None:
    gw, capture = gateway(tmp_path, fake_binary, gateway_factory)
    chunks = list(gw.client().chat.completions.create(model="small", messages=MSG,
                                                      stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and
             c.choices[0].delta.content]
    assert texts[0] == " w0 w1 w2" and "".join(texts) == WHOLE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    sent = [json.loads(line) for line in capture.read_text().splitlines()]
    assert sent[-1]["messages"][-1] == {"role": "assistant", "content": " w0 w1 w2"}


def test_an_engine_that_refuses_to_continue_answers_the_request_as_it_came(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw, capture = gateway(tmp_path, fake_binary, gateway_factory, '"--fake-refuse-prefill"')
    for stream in (False, True, False):
        raw = gw.client().chat.completions.with_raw_response.create(
            model="small", messages=MSG, stream=stream)
        assert raw.status_code == 200 and raw.headers["x-lkn-probe-cost"].endswith("kept=0")
        answer = raw.parse()
        text = answer.choices[0].message.content if not stream else "".join(
            c.choices[0].delta.content or "" for c in answer if c.choices)
        assert text == WHOLE
    sent = [json.loads(line) for line in capture.read_text().splitlines()]
    continuing = [b for b in sent if b["messages"][-1]["role"] == "assistant"]
    assert len(continuing) == 1  # refused once: the engine's next requests are not continued


@pytest.mark.parametrize("args", ['"--fake-no-prefill"', '"--no-prefill-assistant"'])
def test_an_engine_that_answers_anew_is_asked_again(tmp_path: Path, fake_binary: str,
                                                    gateway_factory: Any, args: str) -> None:
    # a build without assistant prefill answers the probe's text as a closed turn: lkn sees
    # its answer does not repeat the text and asks again; with llama-server's own flag in the
    # model's args it does not try
    gw, capture = gateway(tmp_path, fake_binary, gateway_factory, args)
    for _ in range(2):
        raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
        assert raw.parse().choices[0].message.content == WHOLE
        assert raw.headers["x-lkn-probe-cost"].endswith("kept=0")
    sent = [json.loads(line) for line in capture.read_text().splitlines()]
    continuing = [b for b in sent if b["messages"][-1]["role"] == "assistant"]
    assert len(continuing) == (1 if "fake" in args else 0)
