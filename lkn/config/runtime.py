"""Backends added and removed while lkn runs (the admin API): checked like the file's own, and
held to the trust boundary (``upstreams``): a host ``server.runtime_upstreams`` allows, and only
an ``api_key_env`` the config file already uses for that model."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from lkn.config.models import Reported, parse_backend, union_variants
from lkn.config.schema import Config, ModelConfig
from lkn.config.upstreams import BACKEND_ID, has_userinfo, host_of, redact_url, upstream_allowed
from lkn.config.values import collecting, show
from lkn.errors import ConfigError


# What a backend added at runtime may set: where it is and how much it takes. Nothing that names
# a local file, a binary, arguments or an environment.
RUNTIME_KEYS = frozenset({"id", "upstream", "weight", "ctx_size", "parallel",
                          "default_max_tokens", "embeddings", "idle_unload_s",
                          "health_timeout_s", "pinned"})


class RuntimeBackendError(ConfigError):
    """A runtime backend refused, with the request's key that is at fault (``param``) and
    whether it is a matter of permission (``forbidden``: a 403, not a 400)."""

    def __init__(self, message: str, *, param: str, forbidden: bool = False) -> None:
        super().__init__(message)
        self.param = param
        self.forbidden = forbidden


def runtime_backend(cfg: Config, model: ModelConfig, entry: Any,
                    runtime: Collection[str] = ()) -> ModelConfig:
    """An upstream backend registered through the admin API (a JSON object with the keys of a
    backend table: ``id``, ``upstream``, ``weight``), checked like one from the file and against
    the trust boundary. ``runtime``: the names of the backends added at runtime so far (they
    are not the file's: their hosts and keys allow nothing). A reload passes none: it checks
    the entries one by one on top of the file's config, and each one kept passed these same
    checks, so it adds no host or key the file does not allow already."""
    server = cfg.server
    if not server.runtime_upstreams and not server.admin_keys:
        raise RuntimeBackendError(
            "runtime backends are off: set server.runtime_upstreams to the hosts they may use "
            "(or server.admin_keys, to allow the hosts the config file already uses)",
            param="backend", forbidden=True)
    if isinstance(entry, dict) and "id" in entry and not (
            isinstance(entry["id"], str) and BACKEND_ID.fullmatch(entry["id"])):
        raise RuntimeBackendError(f"backend.id: must be 1 to 64 letters, digits, '.', '_' or "
                                  f"'-', starting with a letter or digit, got "
                                  f"{show(entry['id'])[:80]}", param="backend.id")
    extra = sorted(str(k) for k in entry if k not in RUNTIME_KEYS) \
        if isinstance(entry, dict) else []
    if extra:
        raise RuntimeBackendError(
            f"backend.{extra[0][:40]}: a backend added at runtime may set only "
            f"{', '.join(sorted(RUNTIME_KEYS))}", param=f"backend.{extra[0][:40]}")
    with collecting() as errors:
        backend = None
        try:
            if not isinstance(entry, dict) or "upstream" not in entry:
                raise ConfigError("backend: must be an object with an upstream, like "
                                  '{"id": "b2", "upstream": {"url": "http://host/v1"}}')
            if "id" not in entry:
                raise ConfigError("backend.id: is required for a backend added at runtime")
            backend = parse_backend("backend", "", entry, model.name, cfg.server,
                               dict(model.backend_defaults))
        except Reported:
            pass
        except ConfigError as exc:
            errors.append(str(exc))
    if errors or backend is None:
        raise ConfigError.listing(errors or ["backend: invalid"])
    if backend.name in [b.name for b in model.backends]:
        raise ConfigError(f"backend.id: model '{model.name}' already has a backend "
                          f"{backend.name}")
    if backend.upstream is None:
        raise RuntimeBackendError("only upstream backends can be added at runtime",
                                  param="backend.upstream")
    _check_boundary(cfg, model, backend, frozenset(runtime))
    return replace(backend, breaker=model.breaker)


def _check_boundary(cfg: Config, model: ModelConfig, backend: ModelConfig,
                    runtime: frozenset[str]) -> None:
    upstream = backend.upstream
    assert upstream is not None
    if has_userinfo(upstream.url):
        raise RuntimeBackendError(
            f"backend.upstream.url: {redact_url(upstream.url)} carries a user or password; a "
            f"runtime backend's key goes through api_key_env", param="backend.upstream.url")
    file_models = [m for top in cfg.models for m in (top, *top.backends)
                   if m.name not in runtime and m.upstream is not None]
    reason = upstream_allowed(upstream.url, cfg.server.runtime_upstreams,
                              {h for m in file_models if m.upstream is not None
                               for h in [host_of(m.upstream.url)] if h},
                              bool(cfg.server.admin_keys))
    if reason is not None:
        raise RuntimeBackendError(f"backend.upstream.url: {reason}",
                                  param="backend.upstream.url", forbidden=True)
    name = upstream.api_key_env
    if name is not None and name not in file_key_envs(model, runtime):
        raise RuntimeBackendError(
            f"backend.upstream.api_key_env: model '{model.name}' uses no {name} in the config "
            f"file; a runtime backend may only name a key the file's upstreams of this model "
            f"use", param="backend.upstream.api_key_env")


def file_key_envs(model: ModelConfig, runtime: Collection[str] = ()) -> frozenset[str]:
    """The ``api_key_env`` names the config file gives the upstreams of ``model``."""
    return frozenset(m.upstream.api_key_env for m in (model, *model.backends)
                     if m.name not in runtime and m.upstream is not None
                     and m.upstream.api_key_env)


def with_backends(cfg: Config, name: str, backends: tuple[ModelConfig, ...]) -> Config:
    """``cfg`` with the backends of model ``name`` replaced."""
    models = tuple(replace(m, backends=backends, variants=union_variants(backends))
                   if m.name == name else m for m in cfg.models)
    return replace(cfg, models=models)
