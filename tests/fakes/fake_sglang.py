"""A fake SGLang server, run as a real child process in place of ``python -m
sglang.launch_server``. It follows SGLang 0.5.23's source (shared/notes/engine-apis.md §2; the
decisions themselves are in ``fake_sglang_rules.py``, each naming its source file):

- the command line is parsed strictly: an unknown flag exits with status 2; a
  ``--context-length`` above the model directory's config.json maximum exits with status 1
  unless ``SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN`` is set;
- startup: connection refused while "weights load", then ``/health`` and ``/ready`` answer 503
  with an empty body during warmup, then 200;
- ``/ready``, ``/health`` (a slow "1-token generation"), ``/model_info``, ``/server_info``,
  ``/v1/models``, ``/v1/loads`` (running/waiting requests), ``/tokenize`` (a string or a list
  of strings as ``prompt``, or chat ``messages``; an explicit ``add_generation_prompt`` renders
  the messages as given and is a 400 with a named, non-Jinja ``--chat-template``);
- ``/generate`` (``text`` or ``input_ids``; sampling defaults of SamplingParams; integer
  sampling fields must be integers; logprob token text only with ``return_text_in_logprobs``;
  streams are cumulative);
- ``/v1/chat/completions`` and ``/v1/completions`` (stream and not; chat fills unset sampling
  settings from generation_config.json; ``logprobs``/``top_logprobs``; the first chat chunk
  carries only the role). Logprobs are taken after temperature scaling;
- ``/release_memory_occupation`` and ``/resume_memory_occupation``: while anything runs, the
  scheduler's idle assertion kills the whole tree (no HTTP answer); without
  ``--enable-memory-saver`` they are 200 no-ops; releasing ``weights`` without
  ``--enable-weights-cpu-backup`` loses them, and the woken fake answers garbage; resuming a
  tag that was not released kills the tree too;
- errors: OpenAI endpoints answer unwrapped ``{"object":"error",...}``; auth failures
  ``{"error":"Unauthorized"}``; in-stream errors ``data: {"error":{...}}`` then ``[DONE]``;
- it spawns two children in its process group (scheduler, detokenizer) like SGLang does.

Fault flags: --fake-load-s, --fake-warmup-s, --fake-health-delay-s, --fake-no-ready,
--fake-crash-before-ready CODE, --fake-ignore-sigterm, --fake-escaped-child PIDFILE,
--fake-children PIDFILE (writes the scheduler/detokenizer pids), --fake-capture FILE,
--fake-token-delay-s (per generated token, so a request can be kept in flight),
--fake-text FILE (chat answers are this file's raw text, streamed 3 characters a chunk).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

import fake_sglang_rules as rules
from fake_sglang_model import (ARGS, CHAT_DEFAULTS, CTX, DERIVED_CTX, NAME, NAMED_TEMPLATE, STATE,
                               capture, chat_logprobs, encode_chat, encode_text, not_serving,
                               openai_error, render, run_tokens, words)


def die(reason: str) -> None:
    """managers/scheduler.py ``run_scheduler_process``: an exception in the scheduler sends
    SIGQUIT to the parent, whose handler (tokenizer_manager.py) kills the whole process tree:
    the HTTP request that caused it never gets an answer."""
    print(f"fake-sglang: Scheduler hit an exception: {reason}", flush=True)
    print("fake-sglang: SIGQUIT received. It usually means one child failed.", flush=True)
    for pid in STATE["children"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


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
    return web.json_response({"context_length": CTX,
                              "mem_fraction_static": ARGS.mem_fraction_static,
                              "max_total_num_tokens": 100000, "version": "0.5.23-fake",
                              "frontend": "python", "internal_states": [{}]})


async def v1_loads(request: web.Request) -> web.Response:
    """entrypoints/v1_loads.py + managers/load_snapshot.py ``LoadSnapshot.to_dict``."""
    load = {"timestamp": time.time(), "dp_rank": 0, "num_running_reqs": STATE["running"],
            "num_waiting_reqs": 0, "num_used_tokens": 0, "max_total_num_tokens": 100000,
            "queues": {"waiting": 0, "grammar": 0, "paused": 0, "retracted": 0,
                       "prealloc_ready": 0}}
    return web.json_response({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                              "version": "0.5.23-fake", "accelerator": None,
                              "num_accelerators": 1, "loads": [load]})


async def v1_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{
        "id": NAME, "object": "model", "created": int(time.time()), "owned_by": "sglang",
        "root": NAME, "parent": None, "max_model_len": CTX}]})


async def tokenize(request: web.Request) -> web.Response:
    """entrypoints/openai/serving_tokenize.py and protocol.py ``TokenizeRequest``."""
    body = await request.json()
    capture(request.path, body)
    if ("prompt" in body) == ("messages" in body):
        return openai_error(400, "Exactly one of 'prompt' or 'messages' must be provided.")
    if "messages" in body:
        given = body.get("add_generation_prompt")
        if given is None:
            ids = encode_chat(body)
        elif NAMED_TEMPLATE:
            return openai_error(400, "add_generation_prompt is supported only with a Jinja "
                                     "chat template.")
        else:  # "render them as given"
            ids = render(body["messages"], bool(given))
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": CTX})
    prompt = body["prompt"]
    if isinstance(prompt, str):
        ids = encode_text(prompt)
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": CTX})
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        ids_list = [encode_text(p) for p in prompt]
        return web.json_response({"tokens": ids_list, "count": [len(i) for i in ids_list],
                                  "max_model_len": CTX})
    return openai_error(400, "1 validation error for TokenizeRequest\nprompt\n  Input should "
                             "be a valid string")


async def generate(request: web.Request) -> web.StreamResponse:
    """entrypoints/http_server.py ``generate_request``, managers/io_struct.py
    ``GenerateReqInput``, meta_info as tokenizer_manager.py builds it."""
    body = await request.json()
    capture("/generate", body)
    if (why := not_serving()) is not None:
        return web.json_response({"error": {"message": why}}, status=400)
    if ("text" in body) == ("input_ids" in body):
        return web.json_response({"error": {"message": "Either text or input_ids should be "
                                                       "provided."}}, status=400)
    ids = body["input_ids"] if "input_ids" in body else encode_text(body["text"])
    sp = dict(body.get("sampling_params") or {})
    if (err := rules.sampling_error(sp)) is not None:
        return web.json_response({"error": {"message": err}}, status=400)
    n = sp.get("max_new_tokens", 128)  # SamplingParams' default
    temperature = sp.get("temperature", 1.0)
    k = int(body.get("top_logprobs_num") or 0)
    with_text = bool(body.get("return_text_in_logprobs"))
    out = words(n)
    out_ids = [200 + i for i in range(n)]
    meta: dict = {"id": "rid-1", "finish_reason": {"type": "length", "length": n},
                  "prompt_tokens": len(ids), "completion_tokens": n, "cached_tokens": 0}
    if body.get("return_logprob"):
        meta["output_token_logprobs"] = [
            [rules.candidate_logprobs(max(k, 1), i, temperature)[0], t,
             out[i].strip() if with_text else None] for i, t in enumerate(out_ids)]
        if k:
            meta["output_top_logprobs"] = [
                [[lp, 100 + j, f"c{j}" if with_text else None]
                 for j, lp in enumerate(rules.candidate_logprobs(k, i, temperature))]
                for i in range(n)]
    await run_tokens(n)
    return web.json_response({"text": "".join(out), "output_ids": out_ids, "meta_info": meta})


async def openai_generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    chat = request.path.endswith("chat/completions")
    capture(request.path, body)
    if (why := not_serving()) is not None:
        return openai_error(400, why)
    if chat and not body.get("messages"):
        return openai_error(400, "messages is required")
    ids = encode_chat(body) if chat else encode_text(str(body.get("prompt")))
    # protocol.py to_sampling_params: user value > generation_config (chat only) > 1.0
    temperature = body.get("temperature")
    if temperature is None:
        temperature = CHAT_DEFAULTS.get("temperature", 1.0) if chat else 1.0
    if (err := rules.sampling_error({"top_p": body.get("top_p"),
                                     "temperature": temperature})) is not None:
        return openai_error(400, err)
    max_new = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_new is not None and len(ids) + max_new > CTX:
        return openai_error(400, (
            f"Requested token count exceeds the model's maximum context length of "
            f"{CTX} tokens. You requested a total of {len(ids) + max_new} "
            f"tokens: {len(ids)} tokens from the input messages and {max_new} tokens for the "
            f"completion. Please reduce the number of tokens in the input messages or the "
            f"completion to fit within the limit."))
    n = int(max_new or 8)
    out = words(n)
    if chat and ARGS.fake_text:
        text = Path(ARGS.fake_text).read_text(encoding="utf-8")
        out = [text[i:i + 3] for i in range(0, len(text), 3)]
    base = {"id": "cmpl-fake", "created": int(time.time()), "model": NAME}
    usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
    if not body.get("stream"):
        await run_tokens(n)
        choice: dict = {"index": 0, "finish_reason": "length", "matched_stop": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(out),
                                 "reasoning_content": None}
            if body.get("logprobs"):
                choice["logprobs"] = chat_logprobs(n, int(body.get("top_logprobs") or 0),
                                                   temperature)
        else:
            choice["text"] = "".join(out)
        return web.json_response({**base, "object": "chat.completion" if chat else
                                  "text_completion", "choices": [choice], "usage": usage})
    return await stream_answer(request, body, chat, base, out)


async def stream_answer(request: web.Request, body: dict, chat: bool, base: dict,
                        out: list[str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"

    async def send(choice: dict) -> None:
        await resp.write(f"data: {json.dumps({**base, 'object': obj, 'choices': [choice]})}\n\n"
                         .encode())

    STATE["running"] += 1
    try:
        if chat:  # serving_chat.py: the first chunk carries the role and empty content only
            await send({"index": 0, "delta": {"reasoning_content": None, "role": "assistant",
                                              "content": ""}, "logprobs": None,
                        "finish_reason": None, "matched_stop": None})
        for i, w in enumerate(out):
            await asyncio.sleep(ARGS.fake_token_delay_s)
            if body.get("fake_stream_error") and i == 2:
                err = {"error": {"object": "error", "message": "scheduler aborted the request",
                                 "type": "InternalServerError", "param": None, "code": 500}}
                await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                await resp.write(b"data: [DONE]\n\n")
                return resp
            ch: dict = {"index": 0, "finish_reason": None}
            if chat:
                ch["delta"] = {"reasoning_content": None, "content": w}
            else:
                ch["text"] = w
            await send(ch)
        last = {"index": 0, "finish_reason": "length", "matched_stop": None}
        last["delta" if chat else "text"] = {"reasoning_content": None} if chat else ""
        await send(last)
        await resp.write(b"data: [DONE]\n\n")
    finally:
        STATE["running"] -= 1
    return resp


async def memory_tags(request: web.Request) -> list[str]:
    raw = await request.read()
    body = json.loads(raw) if raw.strip() else {}
    return list((body or {}).get("tags") or rules.ALL_TAGS)


async def release(request: web.Request) -> web.Response:
    """managers/scheduler_components/weight_updater.py ``release_memory_occupation``."""
    tags = await memory_tags(request)
    if STATE["running"]:
        die("AssertionError: release_memory_occupation should be called only when server "
            "is idle.")
    STATE["offloaded"] |= set(tags)
    if not ARGS.enable_memory_saver:  # the no-op adapter: nothing is freed, nothing lost
        print(f"fake-sglang: release {tags} will not save memory (memory saver is off)",
              flush=True)
        return web.json_response(None)
    if "weights" in tags and not ARGS.enable_weights_cpu_backup:
        STATE["weights_lost"] = True
    print(f"fake-sglang: memory released {tags}", flush=True)
    return web.json_response(None)


async def resume(request: web.Request) -> web.Response:
    tags = await memory_tags(request)
    missing = [t for t in tags if t not in STATE["offloaded"]]
    if missing:  # weight_updater.py: offload_tags.remove(tag) raises KeyError
        die(f"KeyError: {missing[0]!r}")
    STATE["offloaded"] -= set(tags)
    print(f"fake-sglang: memory resumed {tags}", flush=True)
    return web.json_response(None)


def child_main(role: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN) if ARGS.fake_ignore_sigterm else None
    time.sleep(3600)


def build_app() -> web.Application:
    app = web.Application(middlewares=[auth])
    for path, fn in (("/ready", ready), ("/health", health), ("/health_generate", health),
                     ("/model_info", model_info), ("/server_info", server_info),
                     ("/v1/models", v1_models), ("/v1/loads", v1_loads)):
        app.router.add_get(path, fn)
    for path, fn in (("/tokenize", tokenize), ("/v1/tokenize", tokenize),
                     ("/generate", generate), ("/v1/chat/completions", openai_generate),
                     ("/v1/completions", openai_generate)):
        app.router.add_post(path, fn)
    for path, fn in (("/release_memory_occupation", release),
                     ("/resume_memory_occupation", resume)):
        app.router.add_post(path, fn)
        app.router.add_get(path, fn)
    return app


async def main() -> None:
    print(f"fake-sglang pid {os.getpid()}: loading {ARGS.model_path}", flush=True)
    # engine.py logs its whole ServerArgs dataclass at start, the API key included
    print(f"server_args=ServerArgs(model_path={ARGS.model_path!r}, api_key={ARGS.api_key!r}, "
          f"context_length={ARGS.context_length!r})", flush=True)
    if (err := rules.context_length_error(ARGS.context_length, DERIVED_CTX)) is not None:
        print(f"fake-sglang: {err}", flush=True)
        sys.exit(1)
    if ARGS.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=child_main, args=(role,), daemon=False)
                for role in ("scheduler", "detokenizer")]
    for c in children:
        c.start()
    STATE["children"] = [c.pid for c in children]
    if ARGS.fake_children:
        Path(ARGS.fake_children).write_text(" ".join(str(c.pid) for c in children))
    if ARGS.fake_escaped_child:
        esc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                               start_new_session=True)
        Path(ARGS.fake_escaped_child).write_text(str(esc.pid))
        STATE["children"].append(esc.pid)  # still our child: kill_process_tree finds it
    await asyncio.sleep(ARGS.fake_load_s)  # weights loading: nothing listens yet
    if ARGS.fake_crash_before_ready is not None:
        print("fake-sglang: CUDA error: out of memory", flush=True)
        os._exit(ARGS.fake_crash_before_ready)
    runner = web.AppRunner(build_app())
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
