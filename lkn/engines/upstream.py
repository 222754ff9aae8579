"""How a request goes to its engine: its timeouts and its body, made once where they can be."""
from __future__ import annotations

import functools
from typing import Any

import aiohttp

from lkn import fastjson

JSON_HEADERS = {"Content-Type": "application/json"}


@functools.lru_cache(maxsize=16)
def upstream_timeout(stream: bool, request_timeout_s: float,
                     stream_idle_timeout_s: float) -> aiohttp.ClientTimeout:
    """Never aiohttp's default ``total=300``: a long answer would be cut. A stream has no total,
    only a limit on silence between its events."""
    return aiohttp.ClientTimeout(total=None if stream else request_timeout_s, sock_connect=10,
                                 sock_read=stream_idle_timeout_s if stream else None)


def with_usage(payload: dict[str, Any]) -> bool:
    """Asks a stream's engine for its usage (``stream_options.include_usage``) if the client did
    not; True when lkn asked, so the usage chunk is the gateway's to drop again."""
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return False
    payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                 "include_usage": True}
    return True


def encode(payload: dict[str, Any]) -> bytes:
    return fastjson.dumps(payload)
