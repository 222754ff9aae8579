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
  --api anthropic   be Anthropic's Messages API instead: ``POST /v1/messages`` (``x-api-key`` and
                    ``anthropic-version`` headers; ``message_start`` … ``message_stop`` events;
                    errors as ``{"type": "error", "error": {"type", "message"}}``)
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
    if ARGS.api == "anthropic":
        if ARGS.key and request.headers.get("x-api-key") != ARGS.key:
            return web.json_response({"type": "error", "error": {
                "type": "authentication_error",
                "message": f"invalid x-api-key {request.headers.get('x-api-key')}"}}, status=401)
        if request.headers.get("anthropic-version") != "2023-06-01":
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error",
                "message": "anthropic-version header is required"}}, status=400)
        return await handler(request)  # type: ignore[operator]
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


async def messages(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if ARGS.capture:
        with open(ARGS.capture, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": request.path, "body": body}) + "\n")
    if ARGS.fail_status:
        return web.json_response({"type": "error", "error": {
            "type": "overloaded_error" if ARGS.fail_status >= 500 else "invalid_request_error",
            "message": f"injected upstream error {ARGS.fail_status}"}}, status=ARGS.fail_status)
    unknown = set(body) - {"model", "messages", "system", "max_tokens", "stop_sequences",
                           "temperature", "top_p", "stream", "metadata"}
    if unknown or "max_tokens" not in body or body.get("model") != ARGS.name:
        return web.json_response({"type": "error", "error": {
            "type": "invalid_request_error",
            "message": f"bad request: unknown {sorted(unknown)} or no max_tokens or model"}},
            status=400)
    words = WORDS[:max(1, min(len(WORDS), int(body["max_tokens"])))]
    stop = "max_tokens" if len(words) < len(WORDS) else "end_turn"
    usage_in = {"input_tokens": 11, "output_tokens": 0}
    if not body.get("stream"):
        return web.json_response({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": ARGS.name,
            "content": [{"type": "text", "text": "".join(words)}], "stop_reason": stop,
            "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": len(words)}})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def event(name: str, data: dict[str, object]) -> None:
        await resp.write(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"
                         .encode())
    await event("message_start", {"message": {"id": "msg_fake", "type": "message",
                                              "role": "assistant", "content": [],
                                              "model": ARGS.name, "usage": usage_in}})
    await event("content_block_start", {"index": 0, "content_block": {"type": "text",
                                                                      "text": ""}})
    await event("ping", {})
    for w in words:
        await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                  "text": w}})
    await event("content_block_stop", {"index": 0})
    await event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": len(words)}})
    await event("message_stop", {})
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
    p.add_argument("--api", choices=["openai", "anthropic"], default="openai")
    ARGS = p.parse_args()
    app = web.Application(middlewares=[auth])
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/messages", messages)
    web.run_app(app, host="127.0.0.1", port=ARGS.port, print=None)


if __name__ == "__main__":
    main()
