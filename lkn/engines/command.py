"""``engine = "command"``: any OpenAI-compatible server lkn does not know by name — vLLM,
TabbyAPI, llama-cpp-python's server, a llama.cpp fork — started from the configured argv.

It is supervised exactly like llama-server (same process records, backoff, tree kill, log ring):
only the argv, the readiness check (``health_path`` answering 200) and the absence of a
tokenizer endpoint differ. Placeholders in the argv: ``{port}`` (the port lkn picked),
``{model_file}`` and ``{ctx_size}`` (of the variant). With ``engine_key_env`` set, each start's
key is in that environment variable, and every call lkn makes carries it as a Bearer token.
"""
from __future__ import annotations

from typing import Any

import aiohttp

from lkn.engines.limits import read_limited
from lkn.engines.base import (EngineClient, EngineRequestError, ProbeResult, Readiness,
                              openai_probe, readiness)

CHECK_TIMEOUT = aiohttp.ClientTimeout(total=5)


class CommandEngine(EngineClient):
    kind = "command"

    @property
    def takes_engine_key(self) -> bool:  # type: ignore[override]
        return self.model.engine_key_env is not None

    def env(self, withheld: frozenset[str] = frozenset()) -> dict[str, str]:
        env = super().env(withheld)
        if self.engine_key is not None and self.model.engine_key_env:
            env[self.model.engine_key_env] = self.engine_key
        return env

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
        async with session.get(base_url + self.model.health_path, headers=self.headers(),
                               allow_redirects=False, timeout=CHECK_TIMEOUT) as resp:
            await read_limited(resp)
            return readiness(resp.status, f"HTTP {resp.status}")

    def health_settings(self) -> dict[str, Any]:
        return {**super().health_settings(), "health_path": self.model.health_path}

    async def count_tokens(self, session: aiohttp.ClientSession, base_url: str, route: str,
                           body: dict[str, Any]) -> int:
        raise EngineRequestError("a command engine has no known tokenizer endpoint")

    async def probe(self, session: aiohttp.ClientSession, base_url: str, route: str,
                    body: dict[str, Any], top_k: int, n_tokens: int) -> ProbeResult:
        return await openai_probe(session, base_url + self.upstream_path(route),
                                  self.prepare_body(route, body), route, top_k, n_tokens,
                                  headers=self.headers())
