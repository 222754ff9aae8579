"""A fake llama-server for fault injection, run as a real child process.

It accepts llama-server's command line (``--port``, ``--host``, ``-c`` ...; unknown flags are
ignored) and answers with llama-server's shapes: ``/health`` 503 ``Loading model`` then 200,
``/props``, ``/apply-template``, ``/tokenize``, OpenAI chat/completions (stream and not, with
logprobs) and llama-server's error envelope. ``--fake-*`` flags inject faults:

  --fake-listen-delay-s S   do not listen for S seconds (connection refused)
  --fake-load-s S           answer 503 "Loading model" for S seconds
  --fake-exit-before-ready C  print a few log lines and exit with code C while "loading"
  --fake-ignore-sigterm     ignore SIGTERM (must be SIGKILLed)
  --fake-grandchild PIDFILE spawn a grandchild in a new session; write its pid to PIDFILE
  --fake-children N         spawn N children in the engine's process group that share its output
                            pipe (SGLang's scheduler and detokenizer); pids to PIDFILE.children
  --fake-tokens N           tokens per answer (default 8)
  --fake-token-delay-s S    delay between streamed tokens
  --fake-cut-stream         end streams after half the tokens without [DONE]
  --fake-crash-after-s S    exit abruptly S seconds after becoming ready
  --fake-entropy high|low   shape of the top-k logprobs (uniform or one-hot-ish)
  --fake-probe-error        answer requests with max_tokens=1 (the probe) with HTTP 500
  --fake-verdict P          a chat whose last message asks for "yes or no" is judged: P("No")
  --fake-no-prefill         a chat ending in an assistant message starts a new answer (a build
                            without assistant prefill, or llama-server's --no-prefill-assistant)
  --fake-refuse-prefill     a chat ending in an assistant message is a 400 (llama-server's answer
                            for a thinking template: prefill is incompatible with enable_thinking)
  --fake-probe-delay-s S    delay answers to max_tokens=1 requests
  --fake-capture FILE       append every request body received (JSON lines)
  --fake-text FILE          answer with this file's text (raw, as with --reasoning-format none),
                            streamed in pieces of --fake-text-cut characters (default 3)
  --fake-opens-think        the chat template's generation prompt ends with "<think>\n"
  --fake-malformed-logprobs top-logprob entries carry "logprob": null (a broken engine build)
  --fake-drop-reused        close a keep-alive connection when a second /v1 request arrives on
                            it, unanswered (llama-server dropping an idle connection just then)
  --fake-debug-bodies       at -lv 4 and above, print every request body and, on a continuation
                            line, its prompt (llama.cpp builds whose debug log carries them)
  --fake-env-dump FILE      write the environment it was started with (JSON) to FILE

Like llama-server, ``--api-key K`` or the environment's ``LLAMA_API_KEY`` make every route but
``/health`` and ``/v1/health`` answer 401 "Invalid API Key" to a request without
``Authorization: Bearer K``. Like llama-server, ``--log-prefix`` starts each line with a
timestamp and its level (``0.00.000.000 I ...``; debug lines ``D``); a message's continuation
lines carry none.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

from aiohttp import web


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("-c", type=int, default=512)
    p.add_argument("--alias", default="fake")
    p.add_argument("--api-key", default=None)
    p.add_argument("-lv", "--verbosity", type=int, default=3)
    p.add_argument("--log-prefix", action="store_true")
    p.add_argument("--fake-listen-delay-s", type=float, default=0.0)
    p.add_argument("--fake-load-s", type=float, default=0.0)
    p.add_argument("--fake-exit-before-ready", type=int, default=None)
    p.add_argument("--fake-ignore-sigterm", action="store_true")
    p.add_argument("--fake-grandchild", default=None)
    p.add_argument("--fake-children", type=int, default=0)
    p.add_argument("--fake-tokens", type=int, default=8)
    p.add_argument("--fake-token-delay-s", type=float, default=0.0)
    p.add_argument("--fake-cut-stream", action="store_true")
    p.add_argument("--fake-crash-after-s", type=float, default=None)
    p.add_argument("--fake-entropy", choices=["high", "low"], default="low")
    p.add_argument("--fake-probe-error", action="store_true")
    p.add_argument("--fake-refuse-prefill", action="store_true")
    p.add_argument("--fake-no-prefill", action="store_true")
    p.add_argument("--fake-verdict", type=float, default=None)
    p.add_argument("--fake-probe-delay-s", type=float, default=0.0)
    p.add_argument("--fake-capture", default=None)
    p.add_argument("--fake-text", default=None)
    p.add_argument("--fake-text-cut", type=int, default=3)
    p.add_argument("--fake-opens-think", action="store_true")
    p.add_argument("--fake-malformed-logprobs", action="store_true")
    p.add_argument("--fake-drop-reused", action="store_true")
    p.add_argument("--fake-debug-bodies", action="store_true")
    p.add_argument("--fake-env-dump", default=None)
    p.add_argument("--reranking", "--rerank", action="store_true")
    args, _unknown = p.parse_known_args()
    return args


ARGS = parse()
T0 = time.monotonic()
API_KEY = ARGS.api_key or os.environ.get("LLAMA_API_KEY") or None
PUBLIC = ("/health", "/v1/health")  # llama-server's routes that need no key


def say(level: str, text: str) -> None:
    """A log line of ``level`` (D, I, W, E): prefixed like llama-server's with --log-prefix."""
    print(f"0.00.000.000 {level} {text}" if ARGS.log_prefix else text, flush=True)


def err(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "type": kind}},
                             status=status)


def loading() -> bool:
    return time.monotonic() - T0 < ARGS.fake_load_s


SERVED: set[object] = set()  # client addresses of connections that answered a /v1 request


@web.middleware
async def gate(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if API_KEY and request.path not in PUBLIC and \
            request.headers.get("Authorization") != f"Bearer {API_KEY}":
        say("W", "srv    operator(): unauthorized: Invalid API Key")
        return err(401, "Invalid API Key", "authentication_error")
    if ARGS.fake_debug_bodies and ARGS.verbosity >= 4 and request.can_read_body:
        raw = (await request.read()).decode()
        say("D", f"srv  log_server_r: request: {raw}")
        if request.path.endswith("chat/completions"):
            say("D", "srv  params_from_: formatted prompt:\n"
                + render(json.loads(raw).get("messages", [])))
    if loading():
        return err(503, "Loading model", "unavailable_error")
    if ARGS.fake_drop_reused and request.path.startswith("/v1/") and request.transport:
        conn = request.transport.get_extra_info("peername")
        if conn in SERVED:
            say("I", "fake: dropping a reused connection")
            request.transport.close()
            raise asyncio.CancelledError
        SERVED.add(conn)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def props(request: web.Request) -> web.Response:
    return web.json_response({"default_generation_settings": {"n_ctx": ARGS.c, "params": {}},
                              "total_slots": 1, "model_path": "fake.gguf"})


def render(messages: list[dict]) -> str:
    return "".join(f"<|{m.get('role')}|>{m.get('content') or ''}\n" for m in messages) + \
        "<|assistant|>" + ("<think>\n" if ARGS.fake_opens_think else "")


async def apply_template(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"prompt": render(body["messages"])})


async def tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    content = body.get("content", "")
    return web.json_response({"tokens": list(range(len(content.split())))})


async def rerank(request: web.Request) -> web.Response:
    """llama-server's /v1/rerank: 501 unless started with --reranking; otherwise the documents
    scored (here by the words they share with the query), best first, ``top_n`` of them."""
    if not ARGS.reranking:
        return web.json_response({"error": {"code": 501, "type": "not_supported_error",
                                            "message": "This server does not support reranking. "
                                                       "Start it with `--reranking`"}},
                                 status=501)
    body = await request.json()
    query = set(str(body.get("query", "")).lower().split())
    docs = [str(d) for d in body.get("documents", [])]
    scored = sorted(({"index": i, "relevance_score": float(len(query & set(d.lower().split())))}
                     for i, d in enumerate(docs)), key=lambda r: -r["relevance_score"])
    top = body.get("top_n") or len(scored)
    tokens = sum(len(d.split()) for d in docs) + len(query)
    return web.json_response({"model": ARGS.alias, "object": "list", "results": scored[:top],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def top_logprobs(k: int, verdict: float | None = None) -> list[dict]:
    if verdict is not None:  # a verifier's yes/no token: P("No") = verdict
        rest = [math.log(1e-6)] * max(0, k - 2)
        return [{"id": 1, "token": "No", "bytes": list(b"No"), "logprob": math.log(verdict)},
                {"id": 2, "token": "Yes", "bytes": list(b"Yes"),
                 "logprob": math.log(1 - verdict)},
                *({"id": 3 + i, "token": f"t{i}", "bytes": [116], "logprob": lp}
                  for i, lp in enumerate(rest))][:k]
    if ARGS.fake_malformed_logprobs:
        return [{"id": i, "token": f"t{i}", "bytes": [116], "logprob": None} for i in range(k)]
    if ARGS.fake_entropy == "high":
        lps = [math.log(1.0 / k)] * k
    else:
        lps = [math.log(0.999)] + [math.log(0.001 / max(1, k - 1))] * (k - 1)
    return [{"id": i, "token": f"t{i}", "bytes": [116], "logprob": lp} for i, lp in enumerate(lps)]


def capture(body: dict) -> None:
    if ARGS.fake_capture:
        with open(ARGS.fake_capture, "a", encoding="utf-8") as f:
            f.write(json.dumps(body) + "\n")


async def generate(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        return err(500, f"[json.exception.parse_error.101] {exc}", "server_error")
    capture(body)
    if body.get("fake_error_status"):
        status = int(body["fake_error_status"])
        say("E", f"srv    send_error: task id = 0, error: injected engine error {status}")
        return err(status, f"injected engine error {status}", "invalid_request_error"
                   if status < 500 else "server_error")
    chat = request.path.endswith("chat/completions")
    if chat and "messages" not in body:
        return err(400, "'messages' is required", "invalid_request_error")
    if ARGS.fake_text and chat and body.get("max_tokens") != 1:  # probes get logprobs
        return await scripted(request, body)
    # A continuation (llama-server's assistant prefill, or a prompt ending in token ids) picks
    # up at the token after the ones it is given; the chat answer repeats the prefill.
    messages = body.get("messages") or []
    prefill = ""
    if chat and messages and isinstance(messages[-1], dict) and \
            messages[-1].get("role") == "assistant" and not ARGS.fake_no_prefill:
        prefill = str(messages[-1].get("content") or "")
        start = len(re.findall(r" w\d+", prefill))
    elif not chat and isinstance(body.get("prompt"), list):
        start = sum(1 for p in body["prompt"] if isinstance(p, int))
    else:
        start = 0
    if prefill and ARGS.fake_refuse_prefill:
        return err(400, "Assistant response prefill is incompatible with enable_thinking.",
                   "invalid_request_error")
    n = int(body.get("max_tokens") or ARGS.fake_tokens)
    n = max(0, min(n, ARGS.fake_tokens - start))
    if body.get("max_tokens") == 1:
        if ARGS.fake_probe_error:
            return err(500, "probe failure injected", "server_error")
        await asyncio.sleep(ARGS.fake_probe_delay_s)
    k = body.get("top_logprobs") if chat else body.get("logprobs")
    k = int(k) if isinstance(k, int) and not isinstance(k, bool) else (20 if body.get("logprobs") else 0)
    prompt_tokens = len(render(body.get("messages", [])).split()) if chat else \
        len(str(body.get("prompt", "")).split())
    if prefill:  # the prefill continues the turn: the prompt plus its tokens, nothing more
        prompt_tokens = len(render(messages[:-1]).split()) + start
    elif chat and messages and isinstance(messages[-1], dict) and \
            messages[-1].get("role") == "assistant":
        prompt_tokens += 2  # a closed turn: its end and the next turn's start
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "created": created, "model": body.get("model"),
            "system_fingerprint": "fake"}

    last = messages[-1] if chat and messages and isinstance(messages[-1], dict) else {}
    verdict = ARGS.fake_verdict if ARGS.fake_verdict is not None and \
        "yes or no" in str(last.get("content")) else None

    def lp_entry(i: int) -> dict:
        return {"id": i, "token": f" w{i}", "bytes": list(f" w{i}".encode()), "logprob": -0.1,
                "top_logprobs": top_logprobs(k, verdict)}

    if not body.get("stream"):
        text = prefill + "".join(f" w{i}" for i in range(start, start + n))
        choice: dict = {"index": 0, "finish_reason": "length" if n == body.get("max_tokens") else "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if k:
            choice["logprobs"] = {"content": [lp_entry(i) for i in range(start, start + n)]}
        obj = "chat.completion" if chat else "text_completion"
        return web.json_response({**base, "object": obj, "choices": [choice], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": n,
            "total_tokens": prompt_tokens + n}})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"
    await resp.write(b": ping\n\n")
    if chat:
        first = {**base, "object": obj, "choices": [{"index": 0, "finish_reason": None,
                                                     "delta": {"role": "assistant", "content": None}}]}
        await resp.write(f"data: {json.dumps(first)}\n\n".encode())
    limit = n // 2 if ARGS.fake_cut_stream else n
    try:
        await stream_tokens(resp, base, obj, chat, k, range(start, start + limit), lp_entry,
                            prefill)
    except (ConnectionResetError, asyncio.CancelledError):
        say("I", "fake: client went away mid-stream")
        raise
    if ARGS.fake_cut_stream:
        return resp  # EOF without [DONE], like llama-server stopped mid-answer
    last = {**base, "object": obj, "choices": [{"index": 0, "finish_reason": "stop",
                                                "delta": {}} if chat else
                                               {"index": 0, "finish_reason": "stop", "text": ""}]}
    await resp.write(f"data: {json.dumps(last)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def scripted(request: web.Request, body: dict) -> web.StreamResponse:
    """The --fake-text answer: whole, or streamed cut into pieces (tags cut too)."""
    with open(ARGS.fake_text, encoding="utf-8") as f:
        text = f.read()
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model"),
            "object": "chat.completion.chunk"}
    usage = {"prompt_tokens": 5, "completion_tokens": len(text.split()),
             "total_tokens": 5 + len(text.split())}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "usage": usage,
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": text}}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunks = [{"role": "assistant", "content": None}] + [
        {"content": text[i:i + ARGS.fake_text_cut]}
        for i in range(0, len(text), ARGS.fake_text_cut)]
    try:
        for delta in chunks:
            await asyncio.sleep(ARGS.fake_token_delay_s)
            data = {**base, "choices": [{"index": 0, "finish_reason": None, "delta": delta}]}
            await resp.write(f"data: {json.dumps(data)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        say("I", "fake: client went away mid-stream")
        raise
    last = {**base, "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}]}
    await resp.write(f"data: {json.dumps(last)}\n\n".encode())
    if (body.get("stream_options") or {}).get("include_usage"):
        tail = {**base, "choices": [], "usage": usage}
        await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def stream_tokens(resp, base, obj, chat, k, ids, lp_entry, prefill=""):  # type: ignore[no-untyped-def]
    for i in ids:
        await asyncio.sleep(ARGS.fake_token_delay_s)
        ch: dict = {"index": 0, "finish_reason": None}
        if chat:
            ch["delta"] = {"content": f"{prefill} w{i}"}
            prefill = ""  # llama-server's first delta repeats the prefill
        else:
            ch["text"] = f" w{i}"
        if k:
            ch["logprobs"] = {"content": [lp_entry(i)]}
        await resp.write(f"data: {json.dumps({**base, 'object': obj, 'choices': [ch]})}\n\n".encode())


async def crash_later(delay: float) -> None:
    while loading():
        await asyncio.sleep(0.01)
    await asyncio.sleep(delay)
    say("E", "fake: crashing now")
    os._exit(77)


async def main() -> None:
    say("I", f"fake llama-server pid {os.getpid()} port {ARGS.port}")
    if ARGS.fake_env_dump:
        with open(ARGS.fake_env_dump, "w", encoding="utf-8") as f:
            json.dump(dict(os.environ), f)
    if ARGS.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ARGS.fake_grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True)
        with open(ARGS.fake_grandchild, "w") as f:
            f.write(str(child.pid))
    if ARGS.fake_children:
        kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
                for _ in range(ARGS.fake_children)]
        with open(f"{ARGS.fake_grandchild or 'fake'}.children", "w") as f:
            f.write(" ".join(str(k.pid) for k in kids))
    if ARGS.fake_exit_before_ready is not None:
        say("I", "fake: loading model weights")
        say("E", "fake: error: out of memory while loading tensors")
        await asyncio.sleep(0.2)
        sys.exit(ARGS.fake_exit_before_ready)
    await asyncio.sleep(ARGS.fake_listen_delay_s)
    app = web.Application(middlewares=[gate])
    app.router.add_get("/health", health)
    app.router.add_get("/props", props)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, ARGS.host, ARGS.port).start()
    except OSError:  # llama-server's own words and exit status
        say("E", f"srv         start: couldn't bind HTTP server socket, hostname: {ARGS.host}, "
            f"port: {ARGS.port}")
        say("E", "srv  llama_server: exiting due to HTTP server error")
        raise SystemExit(1)
    say("I", f"fake: listening on http://{ARGS.host}:{ARGS.port}")  # llama-server's line
    if ARGS.fake_crash_after_s is not None:
        asyncio.ensure_future(crash_later(ARGS.fake_crash_after_s))
    stop = asyncio.Event()
    if not ARGS.fake_ignore_sigterm:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    say("I", "fake: SIGTERM, exiting")
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
