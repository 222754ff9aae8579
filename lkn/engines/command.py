"""``engine = "command"``: any OpenAI-compatible server lkn does not know by name — vLLM,
TabbyAPI, llama-cpp-python's server, a llama.cpp fork — started from the configured argv.

It is supervised exactly like llama-server (same process records, backoff, tree kill, log ring):
only the argv, the readiness check (``health_path`` answering 200) and the absence of a
tokenizer endpoint differ. Placeholders in the argv: ``{port}`` (the port lkn picked),
``{model_file}`` and ``{ctx_size}`` (of the variant).
"""
from __future__ import annotations

from typing import Any

import aiohttp

from lkn.engines.base import EngineClient, EngineRequestError, ProbeResult, Readiness, openai_probe

CHECK_TIMEOUT = aiohttp.ClientTimeout(total=5)


class CommandEngine(EngineClient):
    kind = "command"

    def argv(self, port: int) -> list[str]:
        values = {"{port}": str(port), "{model_file}": self.variant.model_file,
                  "{ctx_size}": str(self.variant.ctx_size)}
        out = []
        for arg in self.model.command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            out.append(arg)
        return out

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        async with session.get(base_url + self.model.health_path,
                               timeout=CHECK_TIMEOUT) as resp:
            await resp.read()
            return Readiness(resp.status == 200, f"HTTP {resp.status}")

    def health_settings(self) -> dict[str, Any]:
        return {**super().health_settings(), "health_path": self.model.health_path}

    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        raise EngineRequestError("a command engine has no known tokenizer endpoint")

    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        return await openai_probe(session, base_url + self.upstream_path(route),
                                  self.prepare_body(route, body), route, top_k, n_tokens)
