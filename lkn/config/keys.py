"""Named client keys (``server.keys``): who may call lkn, which models each may use, and the
caps and quotas lkn holds each to.

A key is kept as the sha256 of its secret, never the secret: the config object is logged,
shown in ``/status`` and copied into every request's state, and a digest there gives nothing
away. The secret comes from the environment (``key_env``, read at load), the file (``key``) or
is never given at all (``key_sha256``). The flat ``server.api_keys`` still works: each entry
becomes a key named ``key-1``, ``key-2``, … with no limits.

Ids, never secrets, name a key everywhere else (logs, metrics, events, the activity log), so
an id is a short plain name. An error never quotes a secret, nor a ``key_sha256`` (it may be a
secret pasted into the wrong field).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lkn.config.values import Table, boolean, choice, integer, report, show, strings
from lkn.errors import ConfigError

PRIORITIES = ("interactive", "batch")
SECRET_FIELDS = ("key_env", "key", "key_sha256")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class KeyConfig:
    """One client key and its policy; ``None`` limits are no limit."""
    id: str
    # the lowercase hex sha256 of the secret; out of repr, so a weak key's digest stays out
    # of logs (it could be guessed offline)
    sha256: str = field(repr=False)
    models: tuple[str, ...] = ()              # empty: every model
    max_concurrent: int | None = None         # more requests wait in the key's own queue
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    priority: str | None = None               # "interactive" | "batch": its requests' default
    forward_user_headers: bool = False        # record X-OpenWebUI-User-* sent with this key

    def allows(self, model_name: str) -> bool:
        """Whether this key may use ``model_name`` (a model's public name once the config's
        keys went through ``with_public_models``)."""
        return not self.models or model_name in self.models


def digest(secret: str) -> str:
    """The hex sha256 of a key. A header's undecodable bytes reach us as surrogates (aiohttp):
    they are given back as the bytes they were, never an exception."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def match_key(token: str, keys: tuple[KeyConfig, ...]) -> KeyConfig | None:
    """The key ``token`` is, or None. Every digest is compared, in constant time each, so how
    long the answer takes says nothing about which key (or how much of one) matched."""
    given = digest(token)
    found: KeyConfig | None = None
    for key in keys:
        if hmac.compare_digest(given, key.sha256) and found is None:
            found = key
    return found


def api_key_configs(api_keys: Sequence[str]) -> tuple[KeyConfig, ...]:
    """The flat ``server.api_keys`` as keys ``key-1``, ``key-2``, … with no limits."""
    return tuple(KeyConfig(id=flat_id(i), sha256=digest(k)) for i, k in enumerate(api_keys, 1))


def flat_id(place: int) -> str:
    return f"key-{place}"


def parse_keys(value: Any, api_keys: tuple[str, ...], admin_keys: tuple[str, ...],
               environ: Mapping[str, str] | None = None) -> tuple[KeyConfig, ...]:
    """``server.keys``, then the flat ``api_keys``: every client key, in that order. A key
    table with an error of its own is left out (the error is reported, see
    ``values.collecting``); then ids and secrets used twice, and keys that are admin keys."""
    env = os.environ if environ is None else environ
    named: list[tuple[str, KeyConfig]] = []
    try:
        tables = _key_tables(value)
    except ConfigError as exc:
        report(exc)
        tables = []
    for i, raw in enumerate(tables, 1):
        path = f"server.keys[{i}]"
        try:
            named.append((path, parse_key(path, raw, env)))
        except ConfigError as exc:
            report(exc)
    flat = api_key_configs(api_keys)
    for message in _collisions(named, flat, admin_keys):
        report(ConfigError(message))
    return tuple(key for _, key in named) + flat


def _key_tables(value: Any) -> list[Any]:
    if value is None or (isinstance(value, dict) and not value):
        return []
    if not isinstance(value, list):
        raise ConfigError("server.keys: must be a list of key tables like { id = \"alice\", "
                          "key_env = \"LKN_KEY_ALICE\" } (value not shown)")
    return value


def parse_key(path: str, value: Any, environ: Mapping[str, str]) -> KeyConfig:
    """One key table. Without a valid id or secret it cannot be built: that raises."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a table like {{ id = \"alice\", "
                          f"key_env = \"LKN_KEY_ALICE\" }} (value not shown)")
    t = Table(path, value)
    key_id = t.required("id", _key_id, None, "a name (letters, digits, - _ .)")
    sha = _secret_digest(t, environ)
    key = KeyConfig(
        id=key_id,
        sha256=sha,
        models=t.get("models", strings, ()),
        max_concurrent=t.get("max_concurrent", integer(1), None),
        requests_per_minute=t.get("requests_per_minute", integer(1), None),
        tokens_per_minute=t.get("tokens_per_minute", integer(1), None),
        tokens_per_day=t.get("tokens_per_day", integer(1), None),
        priority=t.get("priority", choice(PRIORITIES), None),
        forward_user_headers=t.get("forward_user_headers", boolean, False),
    )
    t.finish()
    return key


def _key_id(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigError(f"{path}: must be 1 to 64 letters, digits, '-', '_' or '.', "
                          f"got {show(value)}")
    return value


def _secret_digest(t: Table, environ: Mapping[str, str]) -> str:
    """The digest from exactly one of ``key_env``, ``key`` and ``key_sha256``."""
    given = [name for name in SECRET_FIELDS if t.raw(name) is not None]
    if len(given) != 1:
        got = " and ".join(given) if given else "none"
        raise ConfigError(f"{t.path}: must set exactly one of key_env, key, key_sha256, "
                          f"got {got}")
    name = given[0]
    where, value = t.key(name), t.raw(name)
    if name == "key_env":
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
            raise ConfigError(f"{where}: must name an environment variable (letters, digits, "
                              f"_), not hold the key (value not shown)")
        secret = environ.get(value)
        if secret is None:
            raise ConfigError(f"{where}: the environment variable {value} is not set")
        if not secret:
            raise ConfigError(f"{where}: the environment variable {value} is empty")
        return digest(secret)
    if name == "key":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty string (value not shown)")
        return digest(value)
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ConfigError(f"{where}: must be the 64 hex digits of the key's sha256, as "
                          f"`printf %s KEY | sha256sum` prints them (value not shown)")
    return value.lower()


def _collisions(named: list[tuple[str, KeyConfig]], flat: tuple[KeyConfig, ...],
                admin_keys: tuple[str, ...]) -> list[str]:
    """Ids used twice, one secret under two keys, and admin keys among the named keys. Two
    equal entries in the flat ``api_keys`` stay allowed (they always were; the first id wins),
    and so does a flat key that is also an admin key (the README's way for an admin key to
    pass the OpenAI routes)."""
    errors: list[str] = []
    ids = {key.id: f"server.api_keys[{i}]" for i, key in enumerate(flat, 1)}
    secrets = {key.sha256: f"server.api_keys[{i}]" for i, key in reversed(
        list(enumerate(flat, 1)))}
    admins = {digest(k) for k in admin_keys}
    for path, key in named:
        if key.id in ids:
            errors.append(f"{path}.id: {show(key.id)} is already the id of {ids[key.id]}")
        ids.setdefault(key.id, path)
        if key.sha256 in admins:
            errors.append(f"{path}: the same key as one of server.admin_keys (admin keys are "
                          f"separate: give this client a key of its own)")
        elif key.sha256 in secrets:
            errors.append(f"{path}: the same key as {secrets[key.sha256]} (each key names one "
                          f"client)")
        secrets.setdefault(key.sha256, path)
    return errors


def unknown_models(keys: Sequence[KeyConfig], names: set[str]) -> list[str]:
    """Errors for models a key names that are neither a model's name nor an alias. A key's
    place is its place in ``server.keys`` (named keys come first in ``ServerConfig.keys``);
    its id is in the message too, for a file where an earlier key was refused."""
    return [f"server.keys[{i}].models[{j}]: no such model, got {show(name)} "
            f"(key {show(key.id)})"
            for i, key in enumerate(keys, 1)
            for j, name in enumerate(key.models, 1) if name not in names]


def with_public_models(keys: tuple[KeyConfig, ...],
                       public: Mapping[str, str]) -> tuple[KeyConfig, ...]:
    """The keys with each model they name as its public name (``public``: every name and
    alias -> the model's name), so that ``allows(model.name)`` holds for a key that names an
    alias. A name ``public`` does not know is kept (``unknown_models`` reports it)."""
    out = []
    for key in keys:
        models = tuple(dict.fromkeys(public.get(n, n) for n in key.models))
        out.append(key if models == key.models else replace(key, models=models))
    return tuple(out)
