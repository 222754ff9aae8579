"""Who asks: the client key a request came with and the priority it asks for.

A request's caller (``caller_of``) is a short id of its key (never the key itself) when it is a
configured client or admin key, else its address, and whether the key is an admin key. The
scheduler shares an engine's queue fairly between these ids and serves higher priorities first.
A request's ``"lkn": {"priority": ...}`` (``take_priority``) names a class (``interactive``,
``batch``) or a number from 0 to 100; a client may only lower its priority below the default
(``interactive``), an admin key may raise it.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lkn.config import KeyConfig, ServerConfig, match_key
from lkn.errors import BadRequest
from lkn.fleet import planner
from lkn.request.trust import Client

# Who sent a request (set by the auth middleware: the peer, or what a trusted proxy says)
CLIENT = web.RequestKey("lkn_client", Client)


@dataclass(frozen=True)
class Caller:
    key: str = ""        # "key:<its id>", "admin:<n>" for the n-th admin key, else "ip-<address>"
    admin: bool = False  # it came with an admin key: it may raise its priority
    policy: KeyConfig | None = None  # the client key's (server.keys): models, caps, quotas
    # Whose stored data (cached answers, Responses) it sees: "key-<12 hex of the key's
    # sha256>", by the secret itself, not its id or place, which a reload may give another key.
    tenant: str = ""

    @property
    def key_id(self) -> str:
        """The configured key's id ('' for none): what logs, metrics and the activity show."""
        return self.policy.id if self.policy is not None else ""


def bearer_token(request: web.Request) -> str:
    """The key a request came with: ``Authorization: Bearer`` or ``x-api-key``; '' for none."""
    given = request.headers.get("Authorization", "")
    if given.lower().startswith("bearer "):
        return given[7:].strip()
    return request.headers.get("x-api-key", "")


def _bytes(token: str) -> bytes:
    # aiohttp keeps a header's undecodable bytes as surrogates: give them back, never raise
    return token.encode("utf-8", "surrogateescape")


def key_matches(token: str, keys: tuple[str, ...]) -> bool:
    return key_place(token, keys) > 0


def caller_of(request: web.Request, server: ServerConfig) -> Caller:
    """Who sent ``request`` (the auth middleware has let it through already): its key when it
    is one of the configured keys (a client key by its id, an admin key by its place), else its
    address (a token nobody configured names nobody: a new one per request must not buy a
    client a turn per request)."""
    token = bearer_token(request)
    policy = match_key(token, server.keys) if token else None
    admin_at = key_place(token, server.admin_keys) if token else 0
    if policy is not None:
        return Caller(f"key:{policy.id}", bool(admin_at), policy, "key-" + policy.sha256[:12])
    if admin_at:
        return Caller(f"admin:{admin_at}", True,
                      tenant="key-" + hashlib.sha256(_bytes(token)).hexdigest()[:12])
    client = request.get(CLIENT)
    return Caller(f"ip-{client.address if client else request.remote or 'unknown'}")


def key_place(token: str, keys: tuple[str, ...]) -> int:
    """The 1-based place of ``token`` among ``keys``, 0 when it is none of them; every key is
    compared (constant time)."""
    places = [i for i, k in enumerate(keys, 1) if hmac.compare_digest(_bytes(token), k.encode())]
    return places[0] if places else 0


def take_priority(lkn_field: Any, caller: Caller) -> tuple[Any, float]:
    """Takes ``priority`` out of the request's ``"lkn"`` field: (the rest, the priority)."""
    # A key's own class (server.keys priority): a batch key's requests are batch work
    default = planner.CLASSES.get(caller.policy.priority or "", planner.INTERACTIVE) \
        if caller.policy is not None else planner.INTERACTIVE
    if not isinstance(lkn_field, Mapping) or "priority" not in lkn_field:
        return lkn_field, default
    rest = {k: v for k, v in lkn_field.items() if k != "priority"}
    ceiling = planner.TOP if caller.admin else default  # a client only lowers its own class
    try:
        return rest, planner.priority_of(lkn_field["priority"], default, ceiling)
    except ValueError as exc:
        raise BadRequest(f"lkn {exc}", param="lkn.priority") from None
