"""A fake SGLang server, run as a real child process in place of ``python -m
sglang.launch_server``. It follows SGLang 0.5.x's API shapes (see shared/notes/engine-apis.md §2):

- startup: connection refused while "weights load", then ``/health`` and ``/ready`` answer 503
  with an empty body during warmup, then 200;
- ``/ready``, ``/health`` (a slow "1-token generation"), ``/model_info``, ``/server_info``,
  ``/v1/models``, ``/tokenize`` (``prompt`` or chat ``messages``), ``/generate`` with
  ``return_logprob``/``top_logprobs_num`` (streams are cumulative), ``/v1/chat/completions`` and
  ``/v1/completions`` (stream and not), ``/release_memory_occupation`` and
  ``/resume_memory_occupation`` (need ``--enable-memory-saver`` and an idle server);
- errors: OpenAI endpoints answer unwrapped ``{"object":"error",...}``; auth failures
  ``{"error":"Unauthorized"}``; in-stream errors ``data: {"error":{...}}`` then ``[DONE]``;
- it spawns two children in its process group (scheduler, detokenizer) like SGLang does.

Fault flags: --fake-load-s, --fake-warmup-s, --fake-health-delay-s, --fake-no-ready,
--fake-crash-before-ready CODE, --fake-ignore-sigterm, --fake-escaped-child PIDFILE,
--fake-children PIDFILE (writes the scheduler/detokenizer pids), --fake-capture FILE,
--fake-text FILE (chat answers are this file's raw text, streamed 3 characters a chunk).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--context-length", type=int, default=4096)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--api-key", default=None)
    p.add_argument("--fake-load-s", type=float, default=0.0)
    p.add_argument("--fake-warmup-s", type=float, default=0.0)
    p.add_argument("--fake-health-delay-s", type=float, default=0.0)
    p.add_argument("--fake-no-ready", action="store_true")
    p.add_argument("--fake-crash-before-ready", type=int, default=None)
    p.add_argument("--fake-ignore-sigterm", action="store_true")
    p.add_argument("--fake-escaped-child", default=None)
    p.add_argument("--fake-children", default=None)
    p.add_argument("--fake-capture", default=None)
    p.add_argument("--fake-token-delay-s", type=float, default=0.0)
    p.add_argument("--fake-text", default=None)  # chat answers: this file's text, 3 chars a chunk
    args, _unknown = p.parse_known_args()
    return args


ARGS = parse()
NAME = ARGS.served_model_name or ARGS.model_path
STATE = {"status": "starting", "released": False, "running": 0}


def load_tokenizer():  # type: ignore[no-untyped-def]
    from jinja2 import Template
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(ARGS.model_path) / "tokenizer.json"))
    cfg = json.loads((Path(ARGS.model_path) / "tokenizer_config.json").read_text())
    return tok, Template(cfg["chat_template"], trim_blocks=True, lstrip_blocks=True)


TOKENIZER, TEMPLATE = load_tokenizer()


def encode_messages(messages: list[dict]) -> list[int]:
    text = TEMPLATE.render(messages=messages, add_generation_prompt=True)
    return TOKENIZER.encode(text, add_special_tokens=False).ids


def encode_text(text: str) -> list[int]:
    return TOKENIZER.encode(text, add_special_tokens=True).ids


def openai_error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": kind,
                              "param": None, "code": status}, status=status)


@web.middleware
async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if ARGS.api_key and not request.path.startswith(("/health", "/ready", "/metrics")):
        if request.headers.get("Authorization") != f"Bearer {ARGS.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def ready(request: web.Request) -> web.Response:
    if ARGS.fake_no_ready:
        return web.json_response({"detail": "Not Found"}, status=404)
    return web.Response(status=200 if STATE["status"] == "up" else 503)


async def health(request: web.Request) -> web.Response:
    if STATE["status"] != "up":
        return web.Response(status=503)
    await asyncio.sleep(ARGS.fake_health_delay_s)  # the 1-token generation
    return web.Response(status=200)


async def model_info(request: web.Request) -> web.Response:
    return web.json_response({"model_path": ARGS.model_path, "served_model_name": NAME,
                              "tokenizer_path": ARGS.model_path, "is_generation": True,
                              "model_type": "llama", "architectures": ["LlamaForCausalLM"]})


async def server_info(request: web.Request) -> web.Response:
    return web.json_response({"context_length": ARGS.context_length,
                              "mem_fraction_static": ARGS.mem_fraction_static,
                              "max_total_num_tokens": 100000, "version": "0.5.23-fake",
                              "frontend": "python"})


async def v1_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{
        "id": NAME, "object": "model", "created": int(time.time()), "owned_by": "sglang",
        "root": NAME, "parent": None, "max_model_len": ARGS.context_length}]})


async def tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    if "messages" in body:
        ids = encode_messages(body["messages"])
    else:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            ids_list = [encode_text(p) for p in prompt]
            return web.json_response({"tokens": ids_list, "count": [len(i) for i in ids_list],
                                      "max_model_len": ARGS.context_length})
        ids = encode_text(prompt)
    return web.json_response({"tokens": ids, "count": len(ids),
                              "max_model_len": ARGS.context_length})


def top_logprobs(k: int, position: int) -> list[list]:
    # a peaked first position, flatter later ones: deterministic and easy to check
    weights = [math.exp(-(i * (2.0 if position == 0 else 0.3))) for i in range(k)]
    total = sum(weights)
    return [[math.log(w / total), 100 + i, None] for i, w in enumerate(weights)]


def capture(path: str, body: dict) -> None:
    if ARGS.fake_capture:
        with open(ARGS.fake_capture, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": path, "body": body}) + "\n")


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    capture("/generate", body)
    if STATE["released"]:
        return web.json_response({"error": {"message": "memory is released"}}, status=400)
    ids = body.get("input_ids") or encode_text(body.get("text", ""))
    sp = body.get("sampling_params") or {}
    n = int(sp.get("max_new_tokens", 128))
    k = int(body.get("top_logprobs_num") or 0)
    out_ids = [200 + i for i in range(n)]
    meta: dict = {"id": "rid-1", "finish_reason": {"type": "length", "length": n},
                  "prompt_tokens": len(ids), "completion_tokens": n, "cached_tokens": 0}
    if body.get("return_logprob"):
        meta["output_token_logprobs"] = [[-0.1, t, None] for t in out_ids]
        if k:
            meta["output_top_logprobs"] = [top_logprobs(k, i) for i in range(n)]
    return web.json_response({"text": " ".join(f"w{i}" for i in range(n)), "output_ids": out_ids,
                              "meta_info": meta})


async def openai_generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    chat = request.path.endswith("chat/completions")
    capture(request.path, body)
    if STATE["released"]:
        return openai_error(400, "memory is released; resume first")
    if chat and not body.get("messages"):
        return openai_error(400, "messages is required")
    ids = encode_messages(body["messages"]) if chat else encode_text(str(body.get("prompt")))
    max_new = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_new is not None and len(ids) + max_new > ARGS.context_length:
        return openai_error(400, (
            f"Requested token count exceeds the model's maximum context length of "
            f"{ARGS.context_length} tokens. You requested a total of {len(ids) + max_new} "
            f"tokens: {len(ids)} tokens from the input messages and {max_new} tokens for the "
            f"completion. Please reduce the number of tokens in the input messages or the "
            f"completion to fit within the limit."))
    n = int(max_new or 8)
    words = [f" w{i}" for i in range(n)]
    if chat and ARGS.fake_text:
        text = Path(ARGS.fake_text).read_text(encoding="utf-8")
        words = [text[i:i + 3] for i in range(0, len(text), 3)]
    base = {"id": "cmpl-fake", "created": int(time.time()), "model": NAME}
    usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
    if not body.get("stream"):
        choice: dict = {"index": 0, "finish_reason": "length", "matched_stop": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(words),
                                 "reasoning_content": None}
        else:
            choice["text"] = "".join(words)
        return web.json_response({**base, "object": "chat.completion" if chat else
                                  "text_completion", "choices": [choice], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"
    STATE["running"] += 1
    try:
        for i, w in enumerate(words):
            await asyncio.sleep(ARGS.fake_token_delay_s)
            if body.get("fake_stream_error") and i == 2:
                err = {"error": {"object": "error", "message": "scheduler aborted the request",
                                 "type": "InternalServerError", "param": None, "code": 500}}
                await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                await resp.write(b"data: [DONE]\n\n")
                return resp
            ch: dict = {"index": 0, "finish_reason": None}
            if chat:
                ch["delta"] = {"role": "assistant", "content": w} if i == 0 else {"content": w}
            else:
                ch["text"] = w
            await resp.write(f"data: {json.dumps({**base, 'object': obj, 'choices': [ch]})}\n\n"
                             .encode())
        last = {"index": 0, "finish_reason": "length", "matched_stop": None}
        last["delta" if chat else "text"] = {} if chat else ""
        await resp.write(f"data: {json.dumps({**base, 'object': obj, 'choices': [last]})}\n\n"
                         .encode())
        await resp.write(b"data: [DONE]\n\n")
    finally:
        STATE["running"] -= 1
    return resp


async def release(request: web.Request) -> web.Response:
    await request.read()
    if not ARGS.enable_memory_saver:
        return web.json_response({"error": {"message": "memory saver is not enabled"}},
                                 status=400)
    if STATE["running"]:
        return web.json_response({"error": {"message": "AssertionError: server is not idle"}},
                                 status=400)
    STATE["released"] = True
    print("fake-sglang: memory released", flush=True)
    return web.json_response(None)


async def resume(request: web.Request) -> web.Response:
    await request.read()
    STATE["released"] = False
    print("fake-sglang: memory resumed", flush=True)
    return web.json_response(None)


def child_main(role: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN) if ARGS.fake_ignore_sigterm else None
    time.sleep(3600)


async def main() -> None:
    print(f"fake-sglang pid {os.getpid()}: loading {ARGS.model_path}", flush=True)
    if ARGS.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=child_main, args=(role,), daemon=False)
                for role in ("scheduler", "detokenizer")]
    for c in children:
        c.start()
    if ARGS.fake_children:
        Path(ARGS.fake_children).write_text(" ".join(str(c.pid) for c in children))
    if ARGS.fake_escaped_child:
        esc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                               start_new_session=True)
        Path(ARGS.fake_escaped_child).write_text(str(esc.pid))
    await asyncio.sleep(ARGS.fake_load_s)  # weights loading: nothing listens yet
    if ARGS.fake_crash_before_ready is not None:
        print("fake-sglang: CUDA error: out of memory", flush=True)
        os._exit(ARGS.fake_crash_before_ready)
    app = web.Application(middlewares=[auth])
    for path, fn in (("/ready", ready), ("/health", health), ("/health_generate", health),
                     ("/model_info", model_info), ("/server_info", server_info),
                     ("/v1/models", v1_models)):
        app.router.add_get(path, fn)
    for path, fn in (("/tokenize", tokenize), ("/v1/tokenize", tokenize),
                     ("/generate", generate), ("/v1/chat/completions", openai_generate),
                     ("/v1/completions", openai_generate)):
        app.router.add_post(path, fn)
    for path, fn in (("/release_memory_occupation", release),
                     ("/resume_memory_occupation", resume)):
        app.router.add_post(path, fn)
        app.router.add_get(path, fn)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, ARGS.host, ARGS.port).start()
    print("fake-sglang: HTTP up, warming up", flush=True)
    await asyncio.sleep(ARGS.fake_warmup_s)
    STATE["status"] = "up"
    print("fake-sglang: ready", flush=True)
    stop = asyncio.Event()
    if not ARGS.fake_ignore_sigterm:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print("fake-sglang: SIGTERM, exiting", flush=True)
    for c in children:
        c.terminate()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
