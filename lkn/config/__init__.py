"""The Lua configuration file as frozen dataclasses.

``load_config(path)`` runs the file (see ``lua``), then validates the ``server`` and ``models``
tables. Every error names the key path with Lua's 1-based indices and the bad value, e.g.
``models[2].ctx_size: must be a positive integer, got "big"``. Unknown keys are errors too: a typo
in a production config should not silently fall back to a default.

The modules, each of one concept::

    schema     the frozen dataclasses and the names the checks accept
    values     checks of single values (a port range, a listen address, a model file)
    lua        running the Lua file into plain tables
    sections   the server, homeostasis, cache, breaker and upstream tables
    models     a model table: variants, engine checks, backends
    checks     checks across models: duplicate names, references to no model
    keys       named client keys (server.keys; the flat api_keys as key-1, …): policy, matching
    build      the whole file: build_config, load_config
    runtime    backends added or removed while lkn runs
    upstreams  where a runtime backend may point (runtime_upstreams), URLs shown without userinfo
    summary    the startup summary, missing model files

This package re-exports what the rest of lkn imports from ``lkn.config``.
"""
from __future__ import annotations

from lkn.config.build import build_config, load_config
from lkn.config.keys import KeyConfig, match_key
from lkn.config.runtime import runtime_backend, with_backends
from lkn.config.schema import (DEFAULT_VERIFY_PROMPT, ENGINES, HOMEOSTASIS_MODES, INTERVENTIONS,
                               STRATEGIES, BreakerPolicy, CacheConfig, Config, HomeostasisConfig,
                               ModelConfig, ServerConfig, UpstreamConfig, VariantConfig)
from lkn.config.summary import missing_model_files, summary
from lkn.config.values import parse_listen, resolve_model_file
from lkn.errors import ConfigError

__all__ = ["BreakerPolicy", "CacheConfig", "Config", "ConfigError", "DEFAULT_VERIFY_PROMPT",
           "ENGINES", "HOMEOSTASIS_MODES", "HomeostasisConfig", "INTERVENTIONS", "KeyConfig",
           "ModelConfig", "match_key",
           "STRATEGIES", "ServerConfig", "UpstreamConfig", "VariantConfig", "build_config",
           "load_config", "missing_model_files", "parse_listen", "resolve_model_file",
           "runtime_backend", "summary", "with_backends"]
