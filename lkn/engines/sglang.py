"""SGLangEngine: SGLang's ``python -m sglang.launch_server``.

Facts that shape it, checked against the sglang 0.5.23 wheel (paths below are under
``sglang/srt/``):
- connection refused while weights load; then ``/health`` answers 503 (empty body) until the
  warmup request succeeded. ``GET /ready`` is the cheap readiness check; where it is missing
  (404, older SGLang) ``/health`` is used with a long per-probe timeout, because it runs a
  1-token generation that takes 1-20 s (entrypoints/http_server.py);
- the server spawns scheduler and detokenizer processes: ``EngineProcess`` stops the whole
  process group, then sweeps survivors with psutil;
- on SIGTERM it polls every 5 s, drains its requests, then waits up to 15 s for the schedulers
  to free their memory before killing them (managers/tokenizer_manager.py
  ``sigterm_watchdog``, ``_SCHEDULER_EXIT_TIMEOUT_SECS``): hence ``default_stop_grace_s``;
- ``/tokenize`` with ``messages`` renders them exactly as a chat completion does, as long as
  ``add_generation_prompt`` is left out (entrypoints/openai/serving_tokenize.py);
- the probe: chat goes through ``/v1/chat/completions`` with ``logprobs``/``top_logprobs``,
  because only that path fills unset sampling settings from the model's
  generation_config.json and the logprobs are temperature-scaled; completions go through
  ``/generate`` (see ``probe``);
- OpenAI errors come unwrapped (``{"object": "error", "message": ...}``), auth errors as
  ``{"error": "Unauthorized"}``; ``EngineClient.normalize_error`` turns both into lkn's shape;
- sleeping: see ``release_memory`` and ``engine_idle``.
"""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TypeGuard

import aiohttp

from lkn.engines.tokens import generation_prompt
from lkn.engines.limits import read_limited
from lkn.engines.base import (EngineClient, EngineCrashed, EngineRequestError, ProbeResult,
                              Readiness, read_json, readiness)
from lkn.engines.probe_answer import ProbeAnswerError, parse_openai, with_prefill

HELPER_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)
# A release copies the weights to host memory and a resume copies them back: seconds per GB.
MEMORY_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=5)
LOADS_TIMEOUT = aiohttp.ClientTimeout(total=5)
# srt/constants.py GPU_MEMORY_ALL_TYPES; named explicitly so release and resume always match
# (resuming a tag that was not released is a KeyError that kills the scheduler).
MEMORY_TAGS = ("kv_cache", "weights", "cuda_graph")
# OpenAI request field -> /generate sampling_params field (srt/sampling/sampling_params.py)
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "min_p": "min_p", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty", "stop": "stop", "seed": "sampling_seed",
                   "repetition_penalty": "repetition_penalty"}
# SamplingParams' integer fields are not coerced by /generate: a float seed is a 400.
INTEGER_SAMPLING_FIELDS = ("top_k", "sampling_seed")
# Fields of a chat request that change how /tokenize renders the messages
# (entrypoints/openai/protocol.py TokenizeRequest); add_generation_prompt is left out on purpose.
TEMPLATE_FIELDS = ("tools", "tool_choice", "chat_template_kwargs", "reasoning_effort",
                   "continue_final_message")


class SGLangEngine(EngineClient):
    kind = "sglang"
    # srt/entrypoints/http_server.py logs this once the warmup request succeeded.
    ready_markers = ("The server is fired up and ready to roll!",)
    # 5 s until the SIGTERM watchdog notices, the drain, then up to 15 s for the schedulers
    # to release GPU memory; a SIGKILL in between can leave that memory held.
    default_stop_grace_s = 30.0
    # ``--api-key`` guards every route but /health*, /ready and /metrics. SGLang reads it from
    # its argv only, which every user of the host may read in /proc/PID/cmdline: it keeps out
    # callers that cannot see the host's processes (other containers, a network namespace).
    takes_engine_key = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._has_ready: bool | None = None  # learned from the first /ready answer
        self._opens_think: dict[str, bool] = {}

    @property
    def supports_sleep(self) -> bool:  # type: ignore[override]
        return self.model.sleep_when_idle_s is not None

    def argv(self, port: int) -> list[str]:
        m, v = self.model, self.variant
        argv = [m.python or sys.executable, "-m", "sglang.launch_server",
                "--model-path", v.model_file, "--host", "127.0.0.1", "--port", str(port),
                "--context-length", str(v.ctx_size), "--served-model-name", m.name]
        if m.mem_fraction_static is not None:
            argv += ["--mem-fraction-static", f"{m.mem_fraction_static:g}"]
        if m.tokenizer_path:
            argv += ["--tokenizer-path", m.tokenizer_path]
        if m.sleep_when_idle_s is not None:
            # Without the backup, torch_memory_saver discards the paused weights and a woken
            # engine computes with garbage (srt/model_executor/model_runner_components/
            # load_model_utils.py, srt/utils/torch_memory_saver_adapter.py).
            argv += ["--enable-memory-saver", "--enable-weights-cpu-backup"]
        if m.reasoning == "engine" and m.reasoning_parser:
            argv += ["--reasoning-parser", m.reasoning_parser]
        return argv + list(v.args)

    def prepare_body(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        out = super().prepare_body(route, body)
        # llama-server's name (Ollama's too, which lkn passes on) for SGLang's sampling knob
        if "repeat_penalty" in out:
            out.setdefault("repetition_penalty", out.pop("repeat_penalty"))
        return out

    def launch_argv(self, port: int) -> list[str]:
        argv = self.argv(port)
        if self.engine_key is None:
            return argv
        return argv + ["--api-key", self.engine_key]  # after the args: the operator's loses

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        if self._has_ready is not False:
            async with session.get(f"{base_url}/ready", headers=self.headers(),
                                   allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
                status = resp.status
            # /ready, /health and /metrics need no key (srt/utils/auth.py): any SGLang on the
            # port passes them; /v1/models does not.
            if status != 404:
                self._has_ready = True
                return await self.confirm_key(session, f"{base_url}/v1/models",
                                              readiness(status, f"/ready {status}"))
            self._has_ready = False
        # Older SGLang: /health runs a 1-token generation; a short timeout never passes.
        timeout = aiohttp.ClientTimeout(total=self.model.health_timeout_s)
        async with session.get(f"{base_url}/health", headers=self.headers(),
                               allow_redirects=False, timeout=timeout) as resp:
            health = readiness(resp.status, f"/health {resp.status}")
        return await self.confirm_key(session, f"{base_url}/v1/models", health)

    async def on_ready(self, session: aiohttp.ClientSession, base_url: str) -> None:
        try:
            async with session.get(f"{base_url}/server_info", headers=self.headers(),
                                   allow_redirects=False, timeout=HELPER_TIMEOUT) as resp:
                info = await read_json(resp)
            ctx = info.get("context_length")
            if isinstance(ctx, int) and ctx > 0:
                self.effective_ctx = ctx
        except (EngineRequestError, aiohttp.ClientError, AttributeError):
            pass

    # ---- token counting
    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        prompt = body.get("prompt", body.get("input"))
        if route != "chat" and _is_token_ids(prompt):
            return len(prompt)
        if route != "chat" and _is_token_id_batch(prompt):
            return max(len(p) for p in prompt)
        payload: dict[str, Any] = {"model": self.served_model_name()}
        if route == "chat":
            payload["messages"] = body["messages"]
            payload.update({k: body[k] for k in TEMPLATE_FIELDS if k in body})
        else:
            if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompt = max(prompt, key=len)
            payload["prompt"] = prompt if prompt is not None else ""
        async with session.post(f"{base_url}/tokenize", json=payload, headers=self.headers(),
                                allow_redirects=False, timeout=HELPER_TIMEOUT) as resp:
            data = await read_json(resp)
        count = data.get("count") if isinstance(data, dict) else None
        if isinstance(count, list):
            count = max(count)
        if not isinstance(count, int):
            raise EngineRequestError("SGLang /tokenize answered without a count")
        return count

    async def opens_think(self, session: aiohttp.ClientSession, base_url: str,
                          body: dict[str, Any]) -> bool:
        # SGLang renders no template as text over HTTP; the model directory's own template is
        # what it applies (unless its args name another with --chat-template).
        kwargs = dict(body.get("chat_template_kwargs") or {})
        key = json.dumps(kwargs, sort_keys=True)
        if key not in self._opens_think:
            path = self.model.tokenizer_path or self.variant.model_file
            try:
                prompt = await asyncio.to_thread(generation_prompt, path, "hf", kwargs)
            except Exception as exc:  # missing files or packages, template errors: all "unknown"
                raise EngineRequestError(f"cannot render the chat template in {path}: "
                                         f"{exc}") from None
            self._opens_think[key] = prompt.rstrip().endswith("<think>")
        return self._opens_think[key]

    async def count_text_tokens(self, session: aiohttp.ClientSession, base_url: str,
                                text: str) -> int | None:
        payload = {"model": self.served_model_name(), "prompt": text,
                   "add_special_tokens": False}
        async with session.post(f"{base_url}/tokenize", json=payload, headers=self.headers(),
                                allow_redirects=False, timeout=HELPER_TIMEOUT) as resp:
            count = (await read_json(resp)).get("count")
        return count if isinstance(count, int) else None

    # ---- probe
    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        if route == "chat":
            return await self._probe_chat(session, base_url, body, top_k, n_tokens)
        return await self._probe_generate(session, base_url, body, top_k, n_tokens)

    async def _probe_chat(self, session: aiohttp.ClientSession, base_url: str,
                          body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        """The answer's own endpoint, so the probe sees the same template and the same
        sampling defaults (protocol.py ``to_sampling_params``: request value, else the model's
        generation_config.json, else 1.0); the logprobs come after temperature scaling."""
        payload = self.prepare_body("chat", body)
        for key in ("stream", "stream_options", "n", "max_completion_tokens"):
            payload.pop(key, None)
        payload.update(max_tokens=n_tokens, logprobs=True, top_logprobs=top_k)
        async with session.post(base_url + self.upstream_path("chat"), json=payload,
                                headers=self.headers(), allow_redirects=False,
                                timeout=HELPER_TIMEOUT) as resp:
            data = await read_json(resp)
        try:
            return parse_openai(data, "chat")
        except ProbeAnswerError:
            raise EngineRequestError("SGLang's chat answer carries no logprobs") from None

    def continuation(self, route: str, payload: dict[str, Any],
                     probe: ProbeResult) -> dict[str, Any] | None:
        """Chat only: the probe's text as a final assistant message with
        ``continue_final_message`` (serving_chat.py renders it without closing the turn and
        generates on; the answer holds only the new text). /v1/completions takes no prompt of
        text and token ids together, and the /generate probe gives no token ids to add."""
        messages = None if route != "chat" or probe.text is None else \
            with_prefill(payload.get("messages"), probe.text)
        return None if messages is None else dict(payload, messages=messages,
                                                  continue_final_message=True)

    async def _probe_generate(self, session: aiohttp.ClientSession, base_url: str,
                              body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        """/v1/completions fills unset sampling settings with the same constants as /generate
        (serving_completions.py ``_build_sampling_params``, sampling_params.py), so /generate
        with the request's own settings measures at the answer's temperature. It takes the
        prompt as ``text`` or ``input_ids`` (io_struct.py GenerateReqInput); a batch is probed
        by its first prompt, the one choice 0 answers."""
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and prompt and (
                all(isinstance(p, str) for p in prompt) or _is_token_id_batch(prompt)):
            prompt = prompt[0]
        sampling = {dst: _whole_to_int(dst, body[src]) for src, dst in SAMPLING_FIELDS.items()
                    if body.get(src) is not None}
        sampling["max_new_tokens"] = n_tokens
        payload: dict[str, Any] = {"sampling_params": sampling, "return_logprob": True,
                                   "top_logprobs_num": top_k, "logprob_start_len": -1,
                                   "return_text_in_logprobs": True, "stream": False}
        payload["input_ids" if _is_token_ids(prompt) else "text"] = prompt
        async with session.post(f"{base_url}/generate", json=payload, headers=self.headers(),
                                allow_redirects=False, timeout=HELPER_TIMEOUT) as resp:
            data = await read_json(resp)
        meta = data.get("meta_info", {}) if isinstance(data, dict) else {}
        tops = meta.get("output_top_logprobs")
        if not isinstance(tops, list) or not tops:
            raise EngineRequestError("SGLang /generate answered without output_top_logprobs")
        # [logprob, token_id, text] triples; a position without data is null
        positions = tuple(tuple(float(t[0]) for t in pos if t and t[0] is not None)
                          if pos else () for pos in tops)
        texts = tuple(str((pos[0][2] if pos and len(pos[0]) > 2 else "") or "")
                      for pos in tops)
        return ProbeResult(positions=positions, tokens=texts)

    # ---- sleeping
    async def engine_idle(self, session: aiohttp.ClientSession, base_url: str) -> bool:
        """A release while anything runs kills the whole server (the scheduler asserts
        ``is_fully_idle``, the assertion is not caught and the scheduler SIGQUITs its parent:
        managers/scheduler_components/weight_updater.py, managers/scheduler.py
        ``run_scheduler_process``). ``GET /v1/loads`` reports each scheduler's running and
        waiting requests (entrypoints/v1_loads.py; the snapshot is republished at every prefill
        and whenever the scheduler goes idle). Anything unexpected counts as busy: a sleep
        skipped is cheap, a release at the wrong time is not."""
        try:
            async with session.get(f"{base_url}/v1/loads", headers=self.headers(),
                                   allow_redirects=False, timeout=LOADS_TIMEOUT) as resp:
                data = await read_json(resp)
        except (EngineRequestError, aiohttp.ClientError, asyncio.TimeoutError):
            return False
        loads = data.get("loads") if isinstance(data, dict) else None
        if not isinstance(loads, list) or not loads:
            return False
        return all(isinstance(load, dict) and load.get("num_running_reqs") == 0
                   and load.get("num_waiting_reqs") == 0
                   and (load.get("queues") or {}).get("grammar", 0) == 0 for load in loads)

    async def release_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        """Releases KV cache, weights and CUDA graphs; the weights survive only because argv
        adds ``--enable-weights-cpu-backup``. Call it only when ``engine_idle`` said so."""
        await self._memory_call(session, f"{base_url}/release_memory_occupation")

    async def resume_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        await self._memory_call(session, f"{base_url}/resume_memory_occupation")

    async def _memory_call(self, session: aiohttp.ClientSession, url: str) -> None:
        """On success SGLang answers 200 with ``null``; an exception is a 400, a scheduler
        that died takes the whole server with it (no answer at all). Both leave the engine
        in an unknown state: ``EngineCrashed``."""
        try:
            async with session.post(url, json={"tags": list(MEMORY_TAGS)},
                                    headers=self.headers(), allow_redirects=False,
                                    timeout=MEMORY_TIMEOUT) as resp:
                raw = await read_limited(resp)
                if resp.status != 200:
                    raise EngineCrashed(f"{url.rsplit('/', 1)[-1]} answered HTTP {resp.status}: "
                                        f"{raw[:300].decode('utf-8', 'replace')}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise EngineCrashed(f"{url.rsplit('/', 1)[-1]} failed: "
                                f"{type(exc).__name__}: {exc}") from None


def _is_token_ids(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _is_token_id_batch(value: Any) -> TypeGuard[list[list[int]]]:
    return isinstance(value, list) and bool(value) and all(_is_token_ids(p) for p in value)


def _whole_to_int(field: str, value: Any) -> Any:
    """JSON clients send ``40.0`` for 40; /generate's integer fields reject floats."""
    if field in INTEGER_SAMPLING_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
