"""SGLangEngine: SGLang's ``python -m sglang.launch_server``.

Facts that shape it (SGLang 0.5.x):
- connection refused while weights load; then ``/health`` answers 503 (empty body) until the
  warmup request succeeded. ``GET /ready`` (newer SGLang) is the cheap readiness check; where it
  is missing (404) ``/health`` is used with a long per-probe timeout, because it runs a 1-token
  generation that takes 1-20 s;
- the server spawns scheduler and detokenizer processes: ``EngineProcess`` stops the whole
  process group, then sweeps survivors with psutil;
- ``/tokenize`` with ``messages`` applies the chat template and returns ``count``;
- ``/generate`` with ``return_logprob`` + ``top_logprobs_num`` gives the probe's candidates in
  ``meta_info.output_top_logprobs`` as ``[logprob, token_id, text]`` triples;
- OpenAI errors come unwrapped (``{"object": "error", "message": ...}``), auth errors as
  ``{"error": "Unauthorized"}``; ``EngineClient.normalize_error`` turns both into lkn's shape;
- ``/release_memory_occupation`` / ``/resume_memory_occupation`` (with
  ``--enable-memory-saver``) give the GPU memory back without exiting; the server must be idle.
"""
from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from ..tokens import generation_prompt
from .base import EngineClient, EngineRequestError, ProbeResult, Readiness, read_json

HELPER_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "min_p": "min_p", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty", "stop": "stop", "seed": "sampling_seed",
                   "repetition_penalty": "repetition_penalty"}


class SGLangEngine(EngineClient):
    kind = "sglang"

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
            argv.append("--enable-memory-saver")
        if m.reasoning == "engine" and m.reasoning_parser:
            argv += ["--reasoning-parser", m.reasoning_parser]
        return argv + list(v.args)

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        if self._has_ready is not False:
            async with session.get(f"{base_url}/ready",
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status != 404:
                    self._has_ready = True
                    return Readiness(resp.status == 200, f"/ready {resp.status}")
                self._has_ready = False
        # Older SGLang: /health runs a 1-token generation; a short timeout never passes.
        timeout = aiohttp.ClientTimeout(total=self.model.health_timeout_s)
        async with session.get(f"{base_url}/health", timeout=timeout) as resp:
            return Readiness(resp.status == 200, f"/health {resp.status}")

    async def on_ready(self, session: aiohttp.ClientSession, base_url: str) -> None:
        try:
            async with session.get(f"{base_url}/server_info", timeout=HELPER_TIMEOUT) as resp:
                info = await read_json(resp)
            ctx = info.get("context_length")
            if isinstance(ctx, int) and ctx > 0:
                self.effective_ctx = ctx
        except (EngineRequestError, aiohttp.ClientError, AttributeError):
            pass

    async def _tokenize(self, session: aiohttp.ClientSession, base_url: str, route: str,
                        body: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.served_model_name()}
        if route == "chat":
            payload["messages"] = body["messages"]
            payload["add_generation_prompt"] = True
            for key in ("tools", "chat_template_kwargs", "reasoning_effort"):
                if key in body:
                    payload[key] = body[key]
        else:
            prompt = body.get("prompt", body.get("input", ""))
            if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompt = max(prompt, key=len)
            payload["prompt"] = prompt
        async with session.post(f"{base_url}/tokenize", json=payload,
                                timeout=HELPER_TIMEOUT) as resp:
            return await read_json(resp)

    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        prompt = body.get("prompt", body.get("input"))
        if route != "chat" and isinstance(prompt, list) and prompt and all(
                isinstance(t, int) for t in prompt):
            return len(prompt)
        data = await self._tokenize(session, base_url, route, body)
        count = data.get("count")
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
        async with session.post(f"{base_url}/tokenize", json=payload,
                                timeout=HELPER_TIMEOUT) as resp:
            count = (await read_json(resp)).get("count")
        return count if isinstance(count, int) else None

    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        tokens = (await self._tokenize(session, base_url, route, body)).get("tokens")
        if tokens and isinstance(tokens[0], list):
            tokens = tokens[0]
        sampling = {dst: body[src] for src, dst in SAMPLING_FIELDS.items() if src in body}
        sampling["max_new_tokens"] = n_tokens
        payload = {"input_ids": tokens, "sampling_params": sampling, "return_logprob": True,
                   "top_logprobs_num": top_k, "logprob_start_len": -1,
                   "return_text_in_logprobs": True, "stream": False}
        async with session.post(f"{base_url}/generate", json=payload,
                                timeout=HELPER_TIMEOUT) as resp:
            data = await read_json(resp)
        meta = data.get("meta_info", {}) if isinstance(data, dict) else {}
        tops = meta.get("output_top_logprobs")
        if not isinstance(tops, list) or not tops:
            raise EngineRequestError("SGLang /generate answered without output_top_logprobs")
        positions = tuple(tuple(float(t[0]) for t in pos if t and t[0] is not None)
                          if pos else () for pos in tops)
        texts = tuple(str((pos[0][2] if pos and len(pos[0]) > 2 else "") or "")
                      for pos in tops)
        return ProbeResult(positions=positions, tokens=texts)

    async def release_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        async with session.post(f"{base_url}/release_memory_occupation", json={},
                                timeout=HELPER_TIMEOUT) as resp:
            await read_json(resp)

    async def resume_memory(self, session: aiohttp.ClientSession, base_url: str) -> None:
        async with session.post(f"{base_url}/resume_memory_occupation", json={},
                                timeout=HELPER_TIMEOUT) as resp:
            await read_json(resp)
