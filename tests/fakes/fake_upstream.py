"""A fake remote OpenAI-compatible server (OpenAI, vLLM, Ollama's /v1, another lkn), run as a
real child process, for upstream tests and fault injection.

OpenAI's shapes: ``GET /v1/models``; ``POST /v1/chat/completions`` and ``/v1/completions``
(streamed as ``chat.completion.chunk`` events ending with ``data: [DONE]``, a usage chunk when
``stream_options.include_usage`` asks for it; logprobs with ``top_logprobs``); errors as
``{"error": {"message", "type", "param", "code"}}``; a wrong or missing key is a 401 that quotes
the key it got (worse than OpenAI, which masks it: lkn must never pass a key on).

  --port P          listen here (127.0.0.1)
  --key K           the key it wants (Authorization: Bearer K); none: no check
  --name N          the model name it serves (default "remote-model")
  --fail-status S   answer generation requests with HTTP S (500, 429 ...)
  --hang            accept generation requests and never answer
  --cut-stream      end streams after the first chunk, without [DONE]
  --capture FILE    append every generation request (headers of interest + body) as JSON lines
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

ARGS: argparse.Namespace
WORDS = ["Paris", " is", " the", " capital", "."]


def error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None,
                                        "code": code}}, status=status)


@web.middleware
async def auth(request: web.Request, handler: object) -> web.StreamResponse:
    given = request.headers.get("Authorization", "")
    if ARGS.key and given != f"Bearer {ARGS.key}":
        return error(401, f"Incorrect API key provided: {given.removeprefix('Bearer ')}",
                     "invalid_request_error", "invalid_api_key")
    return await handler(request)  # type: ignore[operator]


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": ARGS.name, "object": "model", "created": 1700000000, "owned_by": "fake"}]})


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if ARGS.capture:
        with open(ARGS.capture, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": request.path, "body": body}) + "\n")
    if ARGS.hang:
        await asyncio.sleep(3600)
    if ARGS.fail_status:
        return error(ARGS.fail_status, f"injected upstream error {ARGS.fail_status}",
                     "server_error" if ARGS.fail_status >= 500 else "rate_limit_error")
    if body.get("model") != ARGS.name:
        return error(404, f"The model `{body.get('model')}` does not exist",
                     "invalid_request_error", "model_not_found")
    chat = request.path.endswith("/chat/completions")
    words = WORDS[:max(1, min(len(WORDS), int(body.get("max_tokens") or len(WORDS))))]
    created = int(time.time())
    usage = {"prompt_tokens": 9, "completion_tokens": len(words),
             "total_tokens": 9 + len(words)}
    logprobs = None
    if body.get("logprobs"):
        logprobs = {"content": [{"token": w, "logprob": -0.01, "bytes": None, "top_logprobs": [
            {"token": w, "logprob": -0.01, "bytes": None},
            {"token": "x", "logprob": -5.0, "bytes": None}]} for w in words]}
    if not body.get("stream"):
        choice: dict[str, object] = {"index": 0, "finish_reason": "stop", "logprobs": logprobs}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(words)}
        else:
            choice["text"] = "".join(words)
        return web.json_response({"id": "cmpl-fake", "object": "chat.completion" if chat else
                                  "text_completion", "created": created, "model": ARGS.name,
                                  "choices": [choice], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, w in enumerate(words):
        delta = {"content": w} if i else {"role": "assistant", "content": w}
        chunk = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": created,
                 "model": ARGS.name, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if ARGS.cut_stream:
            return resp
    end = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": created,
           "model": ARGS.name, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await resp.write(f"data: {json.dumps(end)}\n\n".encode())
    if (body.get("stream_options") or {}).get("include_usage"):
        tail = {**end, "choices": [], "usage": usage}
        await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", default="")
    p.add_argument("--name", default="remote-model")
    p.add_argument("--fail-status", type=int, default=0)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--cut-stream", action="store_true")
    p.add_argument("--capture", default=None)
    ARGS = p.parse_args()
    app = web.Application(middlewares=[auth])
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    web.run_app(app, host="127.0.0.1", port=ARGS.port, print=None)


if __name__ == "__main__":
    main()
