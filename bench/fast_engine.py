"""A fast fake OpenAI engine for bench/overhead.py: every answer is ready-made bytes, no sleeps.

Takes llama-server's command line (``--port``, ``--host``, ``-c`` ...; unknown flags are ignored),
so lkn can spawn it as a model's ``binary``. Answers ``/health``, ``/props``, llama-server's
``/apply-template`` and ``/tokenize`` (lkn counts prompt tokens with them) and
``/v1/chat/completions``: a small JSON answer, or with ``"stream": true`` a stream of 16 content
events (each its own HTTP chunk, as an engine that flushes per token), a finish event, the usage
event when ``stream_options.include_usage`` asks for it, and ``[DONE]``.

It is a bare ``asyncio.Protocol`` HTTP/1.1 server, not aiohttp's: with aiohttp's server this fake
managed about half of the rate below on the 2-core box (10k answers/s, 2.4k streams/s), no more
than the goals lkn is measured against.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal

CHUNKS = 16
MODEL = "fast"


def _answer() -> bytes:
    return json.dumps({
        "id": "chatcmpl-fast", "object": "chat.completion", "created": 1700000000,
        "model": MODEL, "system_fingerprint": "fast",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello there, how are you?"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}).encode()


def _event(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1700000000,
        "model": MODEL, "system_fingerprint": "fast",
        "choices": [{"index": 0, "finish_reason": finish, "delta": delta}]}).encode() + b"\n\n"


ANSWER = _answer()
FIRST = _event({"role": "assistant", "content": ""})
TOKENS = [_event({"content": f" w{i}"}) for i in range(CHUNKS)]
LAST = _event({}, "stop")
USAGE = b"data: " + json.dumps({
    "id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1700000000,
    "model": MODEL, "choices": [],
    "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS,
              "total_tokens": 12 + CHUNKS}}).encode() + b"\n\n"
DONE = b"data: [DONE]\n\n"
HEALTH = b'{"status":"ok"}'


def _http(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _json(value: object) -> bytes:
    return _http("200 OK", "application/json", json.dumps(value).encode())


def _stream(events: list[bytes]) -> bytes:
    # one HTTP chunk per event, as an engine that flushes each token; one write for them all
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


ANSWER_HTTP = _http("200 OK", "application/json", ANSWER)
STREAM_HTTP = _stream([FIRST, *TOKENS, LAST, DONE])
STREAM_USAGE_HTTP = _stream([FIRST, *TOKENS, LAST, USAGE, DONE])
HEALTH_HTTP = _http("200 OK", "application/json", HEALTH)
NOT_FOUND = _http("404 Not Found", "application/json",
                  b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}')


def apply_template(body: dict) -> bytes:
    prompt = "".join(f"<|{m.get('role')}|>{m.get('content') or ''}\n"
                     for m in body.get("messages", [])) + "<|assistant|>"
    return _json({"prompt": prompt})


def tokenize(body: dict) -> bytes:
    # llama-server answers the whole token array; about one token per 4 bytes here
    return _json({"tokens": list(range(len(str(body.get("content", ""))) // 4 + 1))})


def chat(body: dict) -> bytes:
    if not body.get("stream"):
        return ANSWER_HTTP
    if (body.get("stream_options") or {}).get("include_usage"):
        return STREAM_USAGE_HTTP
    return STREAM_HTTP


POSTS = {b"/v1/chat/completions": chat, b"/apply-template": apply_template,
         b"/tokenize": tokenize}


class Engine(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length request bodies: all lkn and wrk send."""

    def __init__(self, ctx: int) -> None:
        self.ctx = ctx
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            m = re.search(rb"\r\n[Cc]ontent-[Ll]ength: *(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            method, path = head.split(b" ", 2)[:2]
            self.transport.write(self.answer(method, path, body))  # type: ignore[union-attr]
            if re.search(rb"\r\n[Cc]onnection: *close", head):
                self.transport.close()  # type: ignore[union-attr]
                return

    def answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        if method == b"GET" and path == b"/health":
            return HEALTH_HTTP
        if method == b"GET" and path == b"/props":
            return _json({"default_generation_settings": {"n_ctx": self.ctx, "params": {}},
                          "total_slots": 1, "model_path": "fast.gguf"})
        handler = POSTS.get(path) if method == b"POST" else None
        return handler(json.loads(body)) if handler else NOT_FOUND


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("-c", type=int, default=4096)
    args, _unknown = p.parse_known_args()  # --model, -np, -ngl, --alias ...: whatever lkn sends
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Engine(args.c), args.host, args.port)
    print(f"main: server is listening on http://{args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
