"""The request surface under fuzzing (hypothesis): mutated valid bodies, random bytes, deep
nesting, huge numbers, wrong types, invalid UTF-8 and lone surrogates, on every route that takes
a body. Whatever comes in, lkn answers with an error of its own shape and a 4xx — never a 5xx of
its own, never a traceback — and stays alive.

lkn runs in a thread of its own (its own event loop) in front of an in-process engine that
answers every request 200, so any 5xx would be lkn's. CI runs hypothesis derandomized with
10,000 examples (LKN_FUZZ_EXAMPLES overrides it)."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lkn.gateway.server import create_app
from tests.conftest import lua_str, write_config

EXAMPLES = int(os.environ.get("LKN_FUZZ_EXAMPLES", "10000" if os.environ.get("CI") else "400"))

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
          "/admin/models/fake/backends"]
VALID = {
    "/v1/chat/completions": {"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 8, "temperature": 0.5, "stream": False},
    "/v1/completions": {"model": "fake", "prompt": "hi", "max_tokens": 8, "top_p": 0.9},
    "/v1/embeddings": {"model": "fake", "input": ["hi", "there"]},
    # a second backend on the same engine (its url is set when the engine listens)
    "/admin/models/fake/backends": {"id": "extra", "upstream": {"url": ""}},
}


async def _engine(request: web.Request) -> web.StreamResponse:
    """An OpenAI-compatible engine that answers anything 200, streamed or whole."""
    await request.read()
    if request.path.endswith("/embeddings"):
        return web.json_response({"object": "list", "model": "m", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}})
    chat = request.path.endswith("/chat/completions")
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    choice.update({"message": {"role": "assistant", "content": "ok"}} if chat else {"text": "ok"})
    return web.json_response({"id": "x", "object": "chat.completion" if chat else "text_completion",
                              "created": 1, "model": "m", "choices": [choice],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                        "total_tokens": 2}})


class Gateway:
    """lkn and its engine, served from a thread with its own loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # the test says why instead of timing out
            self.failed = exc
            self.ready.set()
            self.loop.close()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        engine = web.Application()
        engine.router.add_route("*", "/{tail:.*}", _engine)
        self.engine_runner = web.AppRunner(engine)
        await self.engine_runner.setup()
        site = web.TCPSite(self.engine_runner, "127.0.0.1", 0)
        await site.start()
        engine_port = self.engine_runner.addresses[0][1]
        VALID["/admin/models/fake/backends"]["upstream"]["url"] = (
            f"http://127.0.0.1:{engine_port}/v1")
        cfg = write_config(self.tmp_path, f"""
server = {{ log_dir = {lua_str(str(self.tmp_path / "logs"))},
           runtime_upstreams = {{ "127.0.0.1" }} }}
models = {{ {{ name = "fake", backends = {{ {{ id = "one",
  upstream = {{ url = {lua_str(f"http://127.0.0.1:{engine_port}/v1")} }} }} }} }} }}
""")
        self.runner = web.AppRunner(create_app(cfg))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30)
        if self.failed is not None:
            raise self.failed

    def stop(self) -> None:
        async def cleanup() -> None:
            await self.runner.cleanup()
            await self.engine_runner.cleanup()
        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("fuzz"))
    gw.start()
    yield gw
    gw.stop()


def post(gw: Gateway, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- what comes in
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "\U0001f600", "", "user", "assistant", "fake",
                     "json_object", "high"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _dump(obj: Any) -> bytes:
    # json escapes lone surrogates as \udXXX: a body any JSON library would send
    return json.dumps(obj).encode()


@st.composite
def mutated(draw: st.DrawFn, route: str) -> bytes:
    """A valid body with one field replaced, removed or added (nested fields too)."""
    body = json.loads(json.dumps(VALID[route]))
    target: Any = body
    if route == "/v1/chat/completions" and draw(st.booleans()):
        target = body["messages"][0]
    key = draw(st.sampled_from(sorted(target) + ["stream", "n", "logprobs", "top_logprobs",
                                                 "response_format", "tools", "lkn", "stop",
                                                 "max_completion_tokens", "reasoning_effort",
                                                 "seed", "stream_options", "input", "prompt"]))
    action = draw(st.sampled_from(["replace", "remove"]))
    if action == "remove":
        target.pop(key, None)
    else:
        target[key] = draw(json_value)
    return _dump(body)


def deep(depth: int) -> bytes:
    return b'{"model": "fake", "messages": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    st.sampled_from(ROUTES).flatmap(lambda r: st.tuples(st.just(r), mutated(r))),
    st.tuples(st.sampled_from(ROUTES), st.binary(max_size=64)),
    st.tuples(st.sampled_from(ROUTES), json_value.map(_dump)),
    st.tuples(st.sampled_from(ROUTES), st.integers(1, 5000).map(deep)),
    st.tuples(st.sampled_from(ROUTES),  # invalid UTF-8 inside an otherwise valid body
              st.binary(min_size=1, max_size=4).map(
                  lambda b: b'{"model": "fake", "messages": [{"role": "user", "content": "'
                            + b"\xff" + b + b'"}]}')),
    st.tuples(st.sampled_from(ROUTES), st.integers(min_value=10 ** 20, max_value=10 ** 400).map(
        lambda n: b'{"model": "fake", "prompt": "x", "input": "x", "max_tokens": '
                  + str(n).encode() + b', "messages": [{"role": "user", "content": "x"}]}')),
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=bodies)
def test_no_body_is_a_5xx_of_lkn(gateway: Gateway, case: tuple[str, bytes]) -> None:
    path, body = case
    status, headers, raw = post(gateway, path, body)
    if status >= 400:
        assert status < 500, (status, raw[:300])
        err = json.loads(raw)["error"]
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert headers.get("x-lkn-error-source") == "lkn", (status, raw[:300])
    # lkn is alive and serving after each one
    assert post(gateway, "/v1/chat/completions", _dump(VALID["/v1/chat/completions"]))[0] == 200


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("body, param", [
    (b'{"model": "fake", "messages": [{"role": "user", "content": "a\\ud800"}], "prompt": "x", '
     b'"input": "x"}', "messages[0].content"),
    (b'{"model": "fake\\udc00", "messages": [], "prompt": "x", "input": "x"}', "model"),
    (b'{"model": "fake", "input": ["ok", "\\udbff"], "prompt": "x", "messages": []}',
     "input[1]"),
    (b'{"\\ud800": 1, "model": "fake"}', "a key at the top level"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(gateway: Gateway, path: str, body: bytes,
                                                   param: str) -> None:
    status, headers, raw = post(gateway, path, body)
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == param and err["code"] == "invalid_unicode"
    assert err["type"] == "invalid_request_error" and headers["x-lkn-error-source"] == "lkn"


def test_a_valid_surrogate_pair_is_text(gateway: Gateway) -> None:
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert post(gateway, "/v1/chat/completions", body)[0] == 200
