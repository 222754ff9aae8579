"""Abuse: slow and stalled clients, upstream data without end, URLs engines would fetch (issue 20,
item 3 and the image_url finding). Each test fails without its fix.

The engine is a small aiohttp server (``ENGINE``, run as a ``command`` engine with parallel 1)
whose answer the prompt picks: a fast stream of large chunks, an event with no end, a body far
larger than lkn reads, a body that claims to be larger, a short answer late, or at once."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lkn.engines import limits
from lkn.engines.limits import UpstreamTooLarge, read_limited
from lkn.errors import BadRequest
from lkn.relay.client_write import ClientWriter, WriteDeadline
from lkn.request import loading
from lkn.request.validate_formats import check_media_urls
from lkn.sse import EventSplitter, EventTooLarge, SSEParser
from tests.conftest import Gateway, http, lua_str, write_config

MiB = 1024 * 1024

ENGINE = r'''
import argparse, asyncio, json
from aiohttp import web

def chunk(text):
    return ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
            + "\n\n").encode()

ANSWER = {"id": "a", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
          "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

async def health(request):
    return web.json_response({"status": "ok"})

async def chat(request):
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    if prompt == "big-stream":  # as fast as the gateway takes it: 64 KiB events, 256 MiB
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        piece = chunk("x" * 65536)
        for _ in range(4096):
            await resp.write(piece)
        await resp.write(b"data: [DONE]\n\n")
        return resp
    if prompt == "long-line":  # one event that never ends (9 MiB, then silence)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("hello"))
        await resp.write(b'data: {"choices": [{"delta": {"content": "')
        for _ in range(9 * 16):
            await resp.write(b"y" * 65536)
        await asyncio.sleep(30)
        return resp
    if prompt == "huge-body":  # 40 MiB, chunked: no length to refuse it by
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b" " * (1024 * 1024))
        await resp.write(json.dumps(ANSWER).encode())
        return resp
    if prompt == "claims-huge":  # says 100 MiB, sends a little, then nothing
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Content-Length": str(100 * 1024 * 1024)})
        await resp.prepare(request)
        await resp.write(b" " * 1024)
        await asyncio.sleep(30)
        return resp
    if prompt.startswith("large-answer"):  # a whole answer of 24 MiB
        answer = dict(ANSWER, choices=[{"index": 0, "message": {"role": "assistant",
                      "content": "z" * (24 * 1024 * 1024)}, "finish_reason": "stop"}])
        return web.json_response(answer)
    if prompt == "slow":  # holds the engine's one slot a while
        await asyncio.sleep(6)
    if body.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("ok") + b"data: [DONE]\n\n")
        return resp
    return web.json_response(ANSWER)

p = argparse.ArgumentParser()
p.add_argument("--port", type=int)
app = web.Application(client_max_size=1 << 20)
app.router.add_get("/health", health)
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=p.parse_args().port, print=None)
'''


@pytest.fixture
def gw(tmp_path: Path, gateway_factory: Any) -> Gateway:
    script = tmp_path / "abuse_engine.py"
    script.write_text(ENGINE)
    gateway: Gateway = gateway_factory(write_config(tmp_path, f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, stream_idle_timeout_s = 1,
           max_queue_wait_s = 30, log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "m", engine = "command", parallel = 1,
              command = {{ {lua_str(sys.executable)}, {lua_str(str(script))},
                          "--port", "{{port}}" }},
              variants = {{ {{ ctx_size = 2048, vram_mb = 100 }} }} }} }}
"""))
    assert _chat(gateway, "hi").status_code == 200  # the engine is up
    return gateway


def _chat(gw: Gateway, prompt: str, *, stream: bool = False, timeout: float = 20) -> Any:
    return http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "m", "stream": stream,
         "messages": [{"role": "user", "content": prompt}]}), timeout=timeout)


def _stalled_client(gw: Gateway, prompt: str, *, stream: bool) -> socket.socket:
    """A client that sends its request and then never reads (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    body = json.dumps({"model": "m", "stream": stream,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def _wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _stalls(gw: Gateway) -> float:
    return float(gw.state.metrics.client_stalls.value("m"))


# ----------------------------------------------------------------- stalled clients
def test_a_client_that_stops_reading_a_stream_loses_its_engine_slot(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    sock = _stalled_client(gw, "big-stream", stream=True)
    try:
        assert _wait_for(lambda: gw.call(gw.manager.in_flight) == 1, 10)  # it holds the slot
        # parallel = 1: this request waits for the stalled one's lease (the queue waits 30 s)
        answer = _chat(gw, "hi", timeout=25)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "ok"
        assert _stalls(gw) == 1
        [line] = [r.getMessage() for r in caplog.records if "stopped reading" in r.getMessage()]
        assert line.startswith("request req-")
        assert "lkn_client_stalls_total" in http("GET", gw.base_url + "/metrics").text
    finally:
        sock.close()


def test_a_client_that_stops_reading_a_whole_answer_is_dropped(gw: Gateway) -> None:
    sock = _stalled_client(gw, "large-answer", stream=False)
    try:
        assert _wait_for(lambda: _stalls(gw) == 1, 20), "the stalled client was never dropped"
        sock.settimeout(5)
        received = 0
        with pytest.raises(ConnectionResetError):  # aborted: a reset, not a clean end
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
            pytest.fail(f"the answer ended cleanly after {received} bytes")
    finally:
        sock.close()


def test_a_client_that_stops_reading_while_it_waits_gives_its_turn_back(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "INTERVAL_S", 0.0)  # progress without pause: buffers fill
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(_chat, gw, "slow", timeout=30)  # the one slot, for 6 s
        assert _wait_for(lambda: gw.call(gw.manager.in_flight) == 1, 10)
        sock = _stalled_client(gw, "hi", stream=True)  # queued behind it, never reads
        try:
            assert _wait_for(lambda: _stalls(gw) == 1, 20), "the waiting client was never dropped"
            assert busy.result().status_code == 200
            # parallel = 1: served only if the dropped client's turn (or lease) went back
            answer = _chat(gw, "hi", timeout=25)
            assert answer.status_code == 200, answer.text
            assert gw.call(gw.manager.in_flight) == 0
        finally:
            sock.close()


def test_an_admin_follower_that_stops_reading_is_dropped(gw: Gateway) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(b"GET /admin/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    bus = gw.state.bus
    padding = "x" * 4096

    def flood() -> None:  # 2 MiB of events for a follower that takes none
        for _ in range(512):
            bus.publish("request", padding=padding)
    try:
        assert _wait_for(lambda: bus.subscribers == 1, 10)
        # stream_idle_timeout_s = 1: dropped once its buffers are full and a write waited 1 s
        assert _wait_for(lambda: gw.call(flood) is None and bus.subscribers == 0, 30), \
            "the stalled follower was never dropped"
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):  # aborted: a reset, not a clean end
            while sock.recv(1 << 20):
                pass
    finally:
        sock.close()


# ----------------------------------------------------------------- upstream data without end
def test_an_upstream_event_without_end_fails_the_stream_cleanly(gw: Gateway) -> None:
    answer = _chat(gw, "long-line", stream=True)
    assert answer.status_code == 200
    events = [line[6:] for line in answer.text.split("\n") if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["source"] == "lkn" and error["type"] == "upstream_error"
    assert "MiB without its end" in error["message"]
    assert _chat(gw, "hi").status_code == 200  # the lease went back


@pytest.fixture
def small_body_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 MiB for a whole answer: the tests send a little over it, not over the real limit."""
    monkeypatch.setattr(limits, "MAX_UPSTREAM_BODY", 32 * MiB)


@pytest.mark.usefixtures("small_body_limit")
def test_an_upstream_body_over_the_limit_is_a_502(gw: Gateway) -> None:
    answer = _chat(gw, "huge-body")
    assert answer.status_code == 502
    assert answer.headers["x-lkn-error-source"] == "lkn"
    error = answer.json()["error"]
    assert error["source"] == "lkn" and "over lkn's limit" in error["message"]
    assert _chat(gw, "hi").status_code == 200


@pytest.mark.usefixtures("small_body_limit")
def test_an_upstream_body_that_claims_to_be_too_large_is_refused_at_once(gw: Gateway) -> None:
    answer = _chat(gw, "claims-huge")  # not after the engine's 30 s of silence
    assert answer.status_code == 502 and answer.json()["error"]["source"] == "lkn"
    assert "104857600 bytes" in answer.json()["error"]["message"]


@pytest.mark.parametrize("chunks, limit, raises", [
    ([b"data: 1\n\n"], 16, False),
    ([b"data: " + b"x" * 20], 16, True),              # a line without its newline
    ([b"data: 1\ndata: " + b"x" * 9, b"\n"], 32, False),
    ([b"data: " + b"x" * 8 + b"\n", b"data: " + b"x" * 8 + b"\n"], 16, True),  # one event
    ([b"data: " + b"x" * 8, b"x" * 8, b"x" * 8], 16, True),  # grown over several chunks
])
def test_sse_parsers_refuse_an_event_over_the_limit(chunks: list[bytes], limit: int,
                                                    raises: bool) -> None:
    for make in (lambda: EventSplitter(limit), lambda: SSEParser(limit)):
        parser: Any = make()
        fed = (lambda: [list(parser.feed(c)) if isinstance(parser, SSEParser)
                        else parser.feed(c) for c in chunks])
        if raises:
            with pytest.raises(EventTooLarge):
                fed()
        else:
            fed()


async def test_read_limited_stops_at_the_limit(aiohttp_server: Any) -> None:
    async def body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"x" * 1000)
        return resp
    app = web.Application()
    app.router.add_get("/", body)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/")) as resp:
            assert len(await read_limited(resp, 10_000)) == 10_000
        async with session.get(server.make_url("/")) as resp:
            with pytest.raises(UpstreamTooLarge):
                await read_limited(resp, 5_000)
            assert resp.closed


# ----------------------------------------------------------------- URLs engines would fetch
def _parts(*parts: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "what is it?"}, *parts]}]}


PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize("engine, body, param", [
    ("llamacpp", _parts({"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}),
     "messages[1].content[1].image_url.url"),
    ("sglang", _parts({"type": "image_url", "image_url": {"url": "https://x.lan/a.png"}}),
     "messages[1].content[1].image_url.url"),
    ("command", _parts({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
     "messages[1].content[1].image_url.url"),
    ("llamacpp", _parts({"type": "image_url", "image_url": {"url": PNG}},
                        {"type": "image_url", "image_url": {"url": " http://x/"}}),
     "messages[1].content[2].image_url.url"),
    ("llamacpp", _parts({"type": "image_url", "image_url": "http://x/a.png"}),
     "messages[1].content[1].image_url"),
    ("llamacpp", _parts({"type": "image_url", "image_url": {"url": None}}),
     "messages[1].content[1].image_url.url"),
    ("sglang", _parts({"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}),
     "messages[1].content[1].video_url.url"),
    ("llamacpp", _parts({"type": "image_url", "image_url": {"url": PNG}}), None),
    ("llamacpp", _parts({"type": "image_url", "image_url": {"url": "DATA:image/png;base64,A"}}),
     None),
    ("upstream", _parts({"type": "image_url", "image_url": {"url": "https://x/a.png"}}), None),
    ("remote", _parts({"type": "image_url", "image_url": {"url": "https://x/a.png"}}), None),
    ("backends", _parts({"type": "image_url", "image_url": {"url": "https://x/a.png"}}), None),
    ("llamacpp", {"model": "m", "messages": [{"role": "user", "content": "http://x/"}]}, None),
    ("llamacpp", {"model": "m", "prompt": "x"}, None),
])
def test_media_urls_reach_only_engines_that_fetch_from_elsewhere(
        engine: str, body: dict[str, Any], param: str | None) -> None:
    if param is None:
        check_media_urls(body, engine)
        return
    with pytest.raises(BadRequest) as info:
        check_media_urls(body, engine)
    assert info.value.param == param and info.value.status == 400


def test_an_image_url_for_a_local_engine_is_a_400(gw: Gateway) -> None:
    answer = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(_parts(
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/secret"}})))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages[1].content[1].image_url.url"
    assert error["source"] == "lkn"


@pytest.mark.parametrize("limits, buffered, size, timed", [
    ((16384, 65536), 0, 100, False),       # asyncio's marks, a client that keeps up
    ((16, 65536), 0, 300, False),          # uvloop's
    ((16384, 65536), 0, 60000, True),      # a write that may pause the transport
    ((16, 65536), 100, 300, True),         # over the low-water mark: it may be paused now
    ((16384, 65536), 16000, 100, False),
    ((16384, 65536), 16385, 100, True),
])
async def test_a_write_that_cannot_block_needs_no_timer(
        monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], buffered: int, size: int,
        timed: bool) -> None:
    """The hot path: only a write that may block is wrapped in the deadline's timeout."""
    class Transport:
        def get_write_buffer_limits(self) -> tuple[int, int]:
            return limits

        def get_write_buffer_size(self) -> int:
            return buffered

    class Response:
        async def write(self, data: bytes) -> None:
            pass

    timeouts: list[float | None] = []
    real = asyncio.timeout

    def counting(delay: float | None) -> Any:
        timeouts.append(delay)
        return real(delay)

    monkeypatch.setattr(asyncio, "timeout", counting)
    writer = ClientWriter(Response(), Transport(), WriteDeadline(1.0))  # type: ignore[arg-type]
    await writer.write(b"x" * size)
    assert timeouts == ([1.0] if timed else [])


def test_a_model_with_any_local_backend_takes_no_media_urls(tmp_path: Path) -> None:
    """The balancer's pick must not decide whether a request is valid (#20 review)."""
    from lkn.request.validate_formats import media_engine
    cfg = write_config(tmp_path, """models = {
      { name = "r", upstream = { url = "http://10.0.0.1/v1" } },
      { name = "b", backends = { { id = "x", upstream = { url = "http://10.0.0.2/v1" } },
                                 { id = "y", model_file = "/x.gguf", ctx_size = 512 } } },
      { name = "l", model_file = "/x.gguf", ctx_size = 512 } }""")
    assert [media_engine(m) for m in cfg.models] == ["remote", "llamacpp", "llamacpp"]
