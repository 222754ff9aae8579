"""The Lua configuration file as frozen dataclasses.

``load_config(path)`` runs the file (see ``luaload``), then validates the ``server`` and ``models``
tables. Every error names the key path with Lua's 1-based indices and the bad value, e.g.
``models[2].ctx_size: must be a positive integer, got "big"``. Unknown keys are errors too: a typo
in a production config should not silently fall back to a default.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from lkn.config.values import (ALLOW_LONGER_CONTEXT, Table, allows_longer_context, boolean, choice,
                            collecting, env_table, gpu_layers, hf_context_limit, integer,
                            listen_list, model_file, number, origins, parse_listen, port_range,
                            reasoning_mode, report, resolve_model_file, secrets, show, string,
                            strings)
from lkn.errors import ConfigError, ModelNotFound
from lkn.config.lua import load_lua_tables

__all__ = ["CacheConfig", "Config", "ConfigError", "HomeostasisConfig", "ModelConfig",
           "ServerConfig", "UpstreamConfig", "VariantConfig", "load_config", "build_config", "parse_listen",
           "missing_model_files", "resolve_model_file", "summary"]

ENGINES = ("llamacpp", "sglang", "command", "remote")  # "backends" is set by the config itself
# what a backend table may not set: it belongs to the public model
PUBLIC_ONLY = ("name", "aliases", "backends", "fallbacks", "context_fallback", "homeostasis",
               "cache", "balance", "sticky_header", "breaker", "retries")
# set on the public model, they hold for each backend that does not set its own
INHERITED = ("parallel", "default_max_tokens", "idle_unload_s", "stop_grace_s",
             "tokenizer_path", "pinned", "health_timeout_s")
COMMAND_PLACEHOLDERS = ("{port}", "{model_file}", "{ctx_size}")
REMOTE_CTX = 131072  # a remote model's context when its config gives none
REMOTE_PARALLEL = 64  # requests lkn sends a remote model at once unless parallel says
HOMEOSTASIS_MODES = ("homeostatic", "passthrough")
INTERVENTIONS = ("verify_prompt", "escalate", "reasoning", "none")
PROBE_AGGREGATES = ("first", "mean", "max", "answer", "q50", "q75", "q90")
PROBE_SCORES = ("entropy", "margin", "surprise")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
DEFAULT_VERIFY_PROMPT = ("Think carefully, verify your assumptions, and reason step-by-step "
                         "before answering.")


STRATEGIES = ("round_robin", "least_connections", "random", "weighted", "sticky")  # backend balancing


@dataclass(frozen=True)
class BreakerPolicy:
    """A backend's circuit breaker settings (lkn.fleet.breaker runs it)."""
    failures: int = 5
    open_s: float = 30.0
    successes: int = 2


@dataclass(frozen=True)
class HomeostasisConfig:
    mode: str = "passthrough"
    threshold: float = 0.6
    top_k: int = 10
    # Measure before intervening: on SmolLM2-135M the verification prompt lowers accuracy
    # (bench/probe_value.py), so no intervention is applied until a model's config picks one.
    intervention: str = "none"
    verify_prompt: str = DEFAULT_VERIFY_PROMPT
    escalate_to: str | None = None
    reasoning_effort: str = "high"
    probe_timeout_s: float = 5.0
    probe_tokens: int = 1
    probe_aggregate: str = "first"
    # The per-token uncertainty the aggregate combines (probe.token_uncertainty).
    probe_score: str = "entropy"


@dataclass(frozen=True)
class CacheConfig:
    """The response cache of one model (see cache.py): off unless a config turns it on."""
    enabled: bool = False
    ttl_s: float = 600.0
    max_mb: float = 64.0


@dataclass(frozen=True)
class UpstreamConfig:
    """A remote OpenAI-compatible server that answers for a model: no process, no VRAM."""
    url: str                         # its base URL, with the version: https://host/v1
    api_key_env: str | None = None   # the environment variable holding its key (never the key)
    model: str | None = None         # the model name it knows (default: lkn's name)
    timeout_s: float | None = None   # a whole non-streaming answer (default: request_timeout_s)
    health_path: str = "/models"     # checked before first use; "" = never
    api: str = "openai"              # or "anthropic": the Messages API, translated both ways


@dataclass(frozen=True)
class VariantConfig:
    ctx_size: int
    model_file: str
    gpu_layers: int
    cache_type: str = "f16"
    args: tuple[str, ...] = ()
    vram_mb: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    engine: str
    variants: tuple[VariantConfig, ...]
    aliases: tuple[str, ...] = ()
    binary: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    embeddings: bool = False
    parallel: int = 1
    default_max_tokens: int = 512
    homeostasis: HomeostasisConfig = field(default_factory=HomeostasisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    reasoning: str = "engine"
    # SGLang specifics
    reasoning_parser: str | None = None  # SGLang's --reasoning-parser, for reasoning = "engine"
    python: str | None = None
    tokenizer_path: str | None = None
    mem_fraction_static: float | None = None
    health_timeout_s: float = 20.0
    sleep_when_idle_s: float | None = None
    # Stop the engine (llama-server) after this long without a request; 0 = never. None:
    # the server's idle_unload_s.
    idle_unload_s: float | None = None
    # None: the server's stop_grace_s, raised to what the engine needs (EngineClient)
    stop_grace_s: float | None = None
    upstream: UpstreamConfig | None = None  # a remote server instead of an engine process
    # engine = "command": any OpenAI-compatible server, from this argv (placeholders {port},
    # {model_file}, {ctx_size}); ready when health_path answers 200
    command: tuple[str, ...] = ()
    health_path: str = "/health"
    # Several backends for one public model: each a model of its own (``parent`` names the
    # public one), balanced, with a circuit breaker each, retried before the first byte.
    backends: tuple[ModelConfig, ...] = ()
    parent: str | None = None
    # the public model's INHERITED settings as written (for backends added at runtime)
    backend_defaults: tuple[tuple[str, Any], ...] = ()
    weight: int = 1
    balance: str = "least_connections"
    sticky_header: str | None = None  # sticky: hash this header (default: the body's "user")
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    retries: int = 2  # other backends tried after a failure before the first byte
    fallbacks: tuple[str, ...] = ()   # models tried in order when this one fails before answering
    context_fallback: str | None = None  # the model for requests no variant of this one holds
    pinned: bool = False          # never evicted, never unloaded for idleness
    loading_events: bool = False  # stream start/swap progress as reasoning_content deltas

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def variant_name(self, variant: VariantConfig) -> str:
        """A variant's name, for people and for the running config's tables: ``model@ctx``."""
        return f"{self.name}@{variant.ctx_size}"

    @property
    def engine_models(self) -> tuple[ModelConfig, ...]:
        """What runs: its backends, or the model itself."""
        return self.backends or (self,)

    @property
    def engine_tokenizes(self) -> bool:
        """Its engine counts tokens itself (``/tokenize``), and lkn reads its tokenizer from
        its model file: llama-server and SGLang. Others count only with ``tokenizer_path``."""
        return self.engine in ("llamacpp", "sglang")

    @property
    def public(self) -> str:
        """The name clients use (a backend's parent)."""
        return self.parent or self.name


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    api_keys: tuple[str, ...] = ()
    request_timeout_s: float = 600.0
    stream_idle_timeout_s: float = 300.0
    engine_start_timeout_s: float = 120.0
    stop_grace_s: float = 10.0
    # Below Linux's ephemeral range (32768-60999): there an outgoing connection of lkn's own can
    # take an engine's port between the check that it is free and the engine's bind.
    port_range: tuple[int, int] = (20100, 20899)
    log_dir: str = "logs"
    max_loaded_engines: int = 0
    vram_budget_mb: int = 8192
    vram_overhead_mb: int = 256
    max_queue_wait_s: float = 30.0
    max_queue_per_model: int = 64
    queue_timeout_s: float = 300.0
    shutdown_drain_s: float = 30.0
    token_margin: int = 16
    # Failure policy per engine variant (see failures.py): restart on demand after a backoff
    # of restart_backoff_s * 2**(n-1), capped; FAILED after max_start_failures in a row, then
    # one more try every failed_start_cooldown_s.
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    max_start_failures: int = 5
    failed_start_cooldown_s: float = 60.0
    state_dir: str | None = None  # None: $STATE_DIRECTORY (systemd) or ~/.local/state/lkn
    idle_unload_s: float = 0.0    # models' default: stop engines idle this long (0 = never)
    log_max_mb: float = 50.0      # an engine's log file rotates past this size (0: never)
    log_keep: int = 3             # rotated engine log files kept
    admin_keys: tuple[str, ...] = ()   # /admin and /status; none: the admin API is loopback-only
    preload: tuple[str, ...] = ()      # models started at boot and after every reload
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call lkn ("*": any)
    homeostasis: HomeostasisConfig = field(default_factory=HomeostasisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # every model's default


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]
    path: str = ""

    def resolve(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if name in model.names:
                return model
        return None

    def require(self, name: str) -> ModelConfig:
        """The model (or alias) ``name``; a 404 naming what this gateway serves otherwise."""
        model = self.resolve(name)
        if model is None:
            known = ", ".join(n for m in self.models for n in m.names)
            raise ModelNotFound(f"The model '{name}' does not exist; this gateway serves: {known}",
                                param="model")
        return model


# ---------------------------------------------------------------- tables

def _homeostasis(path: str, value: Any, base: HomeostasisConfig) -> HomeostasisConfig:
    t = Table(path, value)
    result = replace(
        base,
        mode=t.get("mode", choice(HOMEOSTASIS_MODES), base.mode),
        threshold=t.get("threshold", number(0.0, 1.0), base.threshold),
        top_k=t.get("top_k", integer(1), base.top_k),
        intervention=t.get("intervention", choice(INTERVENTIONS), base.intervention),
        verify_prompt=t.get("verify_prompt", string, base.verify_prompt),
        escalate_to=t.get("escalate_to", string, base.escalate_to),
        reasoning_effort=t.get("reasoning_effort", choice(("low", "medium", "high")),
                               base.reasoning_effort),
        probe_timeout_s=t.get("probe_timeout_s", number(0.001), base.probe_timeout_s),
        probe_tokens=t.get("probe_tokens", integer(1), base.probe_tokens),
        probe_aggregate=t.get("probe_aggregate", choice(PROBE_AGGREGATES), base.probe_aggregate),
        probe_score=t.get("probe_score", choice(PROBE_SCORES), base.probe_score),
    )
    t.finish()
    return result


def _cache(path: str, value: Any, base: CacheConfig) -> CacheConfig:
    t = Table(path, value)
    result = CacheConfig(
        enabled=t.get("enabled", boolean, base.enabled),
        ttl_s=t.get("ttl_s", number(0.001), base.ttl_s),
        max_mb=t.get("max_mb", number(0.001), base.max_mb),
    )
    t.finish()
    return result


def _server(value: Any) -> ServerConfig:
    t = Table("server", value)
    d = ServerConfig()
    cfg = ServerConfig(
        listen=t.get("listen", listen_list, d.listen),
        api_keys=t.get("api_keys", secrets, d.api_keys),
        request_timeout_s=t.get("request_timeout_s", number(0.001), d.request_timeout_s),
        stream_idle_timeout_s=t.get("stream_idle_timeout_s", number(0.001),
                                    d.stream_idle_timeout_s),
        engine_start_timeout_s=t.get("engine_start_timeout_s", number(0.001),
                                     d.engine_start_timeout_s),
        stop_grace_s=t.get("stop_grace_s", number(0.0), d.stop_grace_s),
        port_range=t.get("engine_port_range", port_range, d.port_range),
        log_dir=t.get("log_dir", string, d.log_dir),
        max_loaded_engines=t.get("max_loaded_engines", integer(0), d.max_loaded_engines),
        vram_budget_mb=t.get("vram_budget_mb", integer(1), d.vram_budget_mb),
        vram_overhead_mb=t.get("vram_overhead_mb", integer(0), d.vram_overhead_mb),
        max_queue_wait_s=t.get("max_queue_wait_s", number(0.0), d.max_queue_wait_s),
        max_queue_per_model=t.get("max_queue_per_model", integer(1), d.max_queue_per_model),
        queue_timeout_s=t.get("queue_timeout_s", number(0.001), d.queue_timeout_s),
        shutdown_drain_s=t.get("shutdown_drain_s", number(0.0), d.shutdown_drain_s),
        token_margin=t.get("token_margin", integer(0), d.token_margin),
        restart_backoff_s=t.get("restart_backoff_s", number(0.0), d.restart_backoff_s),
        restart_backoff_max_s=t.get("restart_backoff_max_s", number(0.0),
                                    d.restart_backoff_max_s),
        max_start_failures=t.get("max_start_failures", integer(1), d.max_start_failures),
        failed_start_cooldown_s=t.get("failed_start_cooldown_s", number(0.0),
                                      d.failed_start_cooldown_s),
        state_dir=t.get("state_dir", string, d.state_dir),
        idle_unload_s=t.get("idle_unload_s", number(0.0), d.idle_unload_s),
        log_max_mb=t.get("log_max_mb", number(0.0), d.log_max_mb),
        log_keep=t.get("log_keep", integer(0), d.log_keep),
        admin_keys=t.get("admin_keys", secrets, d.admin_keys),
        preload=t.get("preload", strings, d.preload),
        cors_origins=t.get("cors_origins", origins, d.cors_origins),
    )
    homeo = t.raw("homeostasis")
    if homeo is not None:
        cfg = replace(cfg, homeostasis=_homeostasis("server.homeostasis", homeo, d.homeostasis))
    cache = t.raw("cache")
    if cache is not None:
        cfg = replace(cfg, cache=_cache("server.cache", cache, d.cache))
    t.finish()
    return cfg


def _variant(path: str, value: Any, model: _ModelDefaults) -> VariantConfig:
    t = Table(path, value)
    for key in model.bad:
        if t.value.get(key) is None:  # it would inherit the model's invalid value
            raise _Reported(f"{path}: inherits an invalid {key}")
    ctx = t.required("ctx_size", integer(1), model.ctx_size, "a positive integer")
    file = t.required("model_file", model_file, model.model_file, "a non-empty string")
    variant = VariantConfig(
        ctx_size=ctx,
        model_file=file,
        gpu_layers=t.get("gpu_layers", gpu_layers, model.gpu_layers),
        cache_type=t.get("cache_type", choice(CACHE_TYPES), model.cache_type),
        args=model.args + t.get("args", strings, ()),
        vram_mb=t.get("vram_mb", integer(1), model.vram_mb),
    )
    t.finish()
    return variant


def _check_sglang_context(path: str, variant: VariantConfig,
                          env: tuple[tuple[str, str], ...]) -> None:
    """SGLang exits at start when ctx_size exceeds the model's own maximum (see
    config_values.hf_context_limit): say so when the config is loaded, not at the first
    request."""
    limit = hf_context_limit(variant.model_file)
    if limit is None or variant.ctx_size <= limit or allows_longer_context(env):
        return
    raise ConfigError(
        f"{path}.ctx_size: {variant.ctx_size} is longer than the {limit} tokens the model's "
        f"config.json allows, and SGLang would refuse to start; lower it, or set "
        f'env = {{ {ALLOW_LONGER_CONTEXT} = "1" }} on the model to run it anyway')


@dataclass
class _ModelDefaults:
    ctx_size: int | None
    model_file: str | None
    gpu_layers: int
    cache_type: str
    args: tuple[str, ...]
    vram_mb: int | None
    bad: set[str] = field(default_factory=set)


def _model(path: str, value: Any, server: ServerConfig) -> ModelConfig:
    t = Table(path, value)
    name = t.get("name", string, None)
    if name is None and t.raw("name") is None:
        report(ConfigError(f"{t.key('name')}: must be a non-empty string, got nil"))
    engine = t.get("engine", choice(ENGINES), "llamacpp")
    defaults = _ModelDefaults(
        ctx_size=t.get("ctx_size", integer(1), None),
        # a command engine may need no file (or find its own)
        model_file=t.get("model_file", model_file, "" if engine == "command" else None),
        gpu_layers=t.get("gpu_layers", gpu_layers, 999),
        cache_type=t.get("cache_type", choice(CACHE_TYPES), "f16"),
        args=(),
        vram_mb=t.get("vram_mb", integer(1), None),
    )
    # Invalid model-level values (already reported) that variants would inherit.
    defaults.bad = {k for k in ("ctx_size", "model_file")
                    if t.value.get(k) is not None and not getattr(defaults, k)}
    model_args = t.get("args", strings, ())
    env = t.get("env", env_table, ())
    raw_upstream = t.raw("upstream")
    upstream = None if raw_upstream is None else _upstream(t.key("upstream"), raw_upstream)
    if upstream is not None:
        engine = "remote"
    command = _command(t, engine)
    backends = _backends(t, name or "?", server)
    if t.raw("backends") is not None:
        engine = "backends"
    try:
        variants = (_union_variants(backends) if engine == "backends" else
                    _remote_variants(t, defaults) if upstream is not None else
                    _variants(t, path, engine, defaults, model_args, env))
    except _Reported:
        variants = ()
    except ConfigError as exc:  # the rest of the model is still checked
        report(exc)
        variants = ()
    homeo = t.raw("homeostasis")
    homeostasis = (server.homeostasis if homeo is None else
                   _homeostasis(t.key("homeostasis"), homeo, server.homeostasis))
    cache = t.raw("cache")
    sleep = t.get("sleep_when_idle_s", number(0.0), None)
    reasoning, parser = reasoning_mode(t, engine)
    model = ModelConfig(
        name=name,
        engine=engine,
        variants=variants,
        aliases=t.get("aliases", strings, ()),
        binary=t.get("binary", string, None),
        args=model_args,
        env=env,
        embeddings=t.get("embeddings", boolean, False),
        # a remote server batches for itself: lkn's queue only holds what exceeds this
        parallel=t.get("parallel", integer(1), REMOTE_PARALLEL if upstream else 1),
        default_max_tokens=t.get("default_max_tokens", integer(1), 512),
        homeostasis=homeostasis,
        cache=server.cache if cache is None else _cache(t.key("cache"), cache, server.cache),
        reasoning=reasoning,
        reasoning_parser=parser,
        python=t.get("python", string, None),
        tokenizer_path=t.get("tokenizer_path", string, None),
        mem_fraction_static=t.get("mem_fraction_static", number(0.01, 1.0), None),
        health_timeout_s=t.get("health_timeout_s", number(0.001), 20.0),
        sleep_when_idle_s=sleep,
        idle_unload_s=t.get("idle_unload_s", number(0.0), server.idle_unload_s),
        stop_grace_s=t.get("stop_grace_s", number(0.0), None),
        upstream=upstream,
        backends=backends,
        balance=t.get("balance", choice(STRATEGIES), "least_connections"),
        sticky_header=t.get("sticky_header", string, None),
        breaker=_breaker(t.key("breaker"), t.raw("breaker")),
        retries=t.get("retries", integer(0), 2),
        command=command,
        health_path=t.get("health_path", health_path, "/health"),
        fallbacks=t.get("fallbacks", strings, ()),
        context_fallback=t.get("context_fallback", string, None),
        pinned=t.get("pinned", boolean, False),
        loading_events=t.get("loading_events", boolean, False),
    )
    t.finish()
    if not variants or name is None:
        raise _Reported(f"{path}: has errors")
    if backends:  # each backend is answerable to its public model's breaker settings
        model = replace(model, backends=tuple(replace(b, breaker=model.breaker)
                                              for b in backends),
                        backend_defaults=tuple((k, t.value[k]) for k in INHERITED
                                               if t.value.get(k) is not None))
    return model


def _backends(t: Table, name: str, server: ServerConfig) -> tuple[ModelConfig, ...]:
    raw = t.raw("backends")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{t.key('backends')}: must be a non-empty list of backend tables, "
                          f"got {show(raw)}")
    inherit = {k: t.value[k] for k in INHERITED if t.value.get(k) is not None}
    out = [_backend(f"{t.key('backends')}[{i}]", str(i), entry, name, server, inherit)
           for i, entry in enumerate(raw, 1)]
    ids = [b.name for b in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{t.key('backends')}: two backends share an id")
    return tuple(out)


def _backend(path: str, default_id: str, entry: Any, name: str, server: ServerConfig,
             inherit: dict[str, Any]) -> ModelConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: must be a table, got {show(entry)}")
    for key in PUBLIC_ONLY:
        if key in entry:
            report(ConfigError(f"{path}.{key}: belongs to the model, not to a backend"))
    entry = {**inherit, **{k: v for k, v in entry.items() if k not in PUBLIC_ONLY}}
    weight = integer(1)(f"{path}.weight", entry.pop("weight", 1))
    label = string(f"{path}.id", entry.pop("id", default_id))
    if "/" in label:
        raise ConfigError(f"{path}.id: must not contain \"/\", got {show(label)}")
    backend = _model(path, {**entry, "name": f"{name}/{label}"}, server)
    return replace(backend, parent=name, weight=weight)


def runtime_backend(cfg: Config, model: ModelConfig, entry: Any) -> ModelConfig:
    """An upstream backend registered through the admin API (a JSON object with the keys of a
    backend table: ``id``, ``upstream``, ``weight``), checked like one from the file."""
    with collecting() as errors:
        backend = None
        try:
            if not isinstance(entry, dict) or "upstream" not in entry:
                raise ConfigError("backend: must be an object with an upstream, like "
                                  '{"id": "b2", "upstream": {"url": "http://host/v1"}}')
            if "id" not in entry:
                raise ConfigError("backend.id: is required for a backend added at runtime")
            backend = _backend("backend", "", entry, model.name, cfg.server,
                               dict(model.backend_defaults))
        except _Reported:
            pass
        except ConfigError as exc:
            errors.append(str(exc))
    if errors or backend is None:
        raise ConfigError.listing(errors or ["backend: invalid"])
    if backend.name in [b.name for b in model.backends]:
        raise ConfigError(f"backend.id: model '{model.name}' already has a backend "
                          f"{backend.name}")
    return replace(backend, breaker=model.breaker)


def with_backends(cfg: Config, name: str, backends: tuple[ModelConfig, ...]) -> Config:
    """``cfg`` with the backends of model ``name`` replaced."""
    models = tuple(replace(m, backends=backends, variants=_union_variants(backends))
                   if m.name == name else m for m in cfg.models)
    return replace(cfg, models=models)


def _union_variants(backends: tuple[ModelConfig, ...]) -> tuple[VariantConfig, ...]:
    return tuple(sorted((v for b in backends for v in b.variants), key=lambda v: v.ctx_size))


def _breaker(path: str, value: Any) -> BreakerPolicy:
    if value is None:
        return BreakerPolicy()
    t = Table(path, value)
    d = BreakerPolicy()
    result = BreakerPolicy(failures=t.get("failures", integer(1), d.failures),
                           open_s=t.get("open_s", number(0.0), d.open_s),
                           successes=t.get("successes", integer(1), d.successes))
    t.finish()
    return result


def _upstream(path: str, value: Any) -> UpstreamConfig:
    t = Table(path, value)
    url = t.required("url", string, None, "a URL like \"https://api.example/v1\"")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{t.key('url')}: must start with http:// or https://, got {show(url)}")
    result = UpstreamConfig(
        url=url.rstrip("/"),
        api_key_env=t.get("api_key_env", env_name, None),
        model=t.get("model", string, None),
        timeout_s=t.get("timeout_s", number(0.001), None),
        health_path=t.get("health_path", health_path, "/models"),
        api=t.get("api", choice(("openai", "anthropic")), "openai"),
    )
    t.finish()
    return result


def _command(t: Table, engine: str) -> tuple[str, ...]:
    command = t.get("command", strings, ())
    if engine == "command" and not command:
        report(ConfigError(f'{t.key("command")}: engine = "command" needs the server\'s argv, '
                           f'e.g. {{ "vllm", "serve", "{{model_file}}", "--port", "{{port}}" }}'))
    elif engine == "command" and not any("{port}" in a for a in command):
        report(ConfigError(f"{t.key('command')}: must pass {{port}} to the server (lkn picks "
                           f"the port), got {show(list(command))}"))
    elif engine != "command" and command:
        report(ConfigError(f'{t.key("command")}: only engine = "command" takes a command'))
    return command


def env_name(path: str, value: Any) -> str:
    """The name of an environment variable — never the key itself (it would be echoed)."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ConfigError(f"{path}: must name an environment variable (letters, digits, _), "
                          f"not hold the key (value not shown)")
    return value


def health_path(path: str, value: Any) -> str:
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ConfigError(f'{path}: must be a path like "/models", or "" for none, '
                          f"got {show(value)}")
    return value


def _remote_variants(t: Table, defaults: _ModelDefaults) -> tuple[VariantConfig, ...]:
    """One variant, no file, no VRAM: the remote server decides what fits."""
    if t.raw("variants") is not None:
        raise ConfigError(f"{t.key('variants')}: a model served by an upstream has no "
                          f"variants (set ctx_size for its context)")
    return (VariantConfig(ctx_size=defaults.ctx_size or REMOTE_CTX, model_file="",
                          gpu_layers=0, vram_mb=0),)


class _Reported(ConfigError):
    """A table that cannot be built; its errors were already collected."""


def _variants(t: Table, path: str, engine: str, defaults: _ModelDefaults,
              model_args: tuple[str, ...], env: tuple[tuple[str, str], ...]
              ) -> tuple[VariantConfig, ...]:
    raw_variants = t.raw("variants")
    variants: tuple[VariantConfig, ...]
    if raw_variants is None:
        paths = [path]
        variants = (_variant(path, {}, defaults),)
    else:
        if not isinstance(raw_variants, list) or not raw_variants:
            raise ConfigError(f"{t.key('variants')}: must be a non-empty list of tables, "
                              f"got {show(raw_variants)}")
        paths = [f"{t.key('variants')}[{i}]" for i in range(1, len(raw_variants) + 1)]
        variants = tuple(_variant(p, v, defaults) for p, v in zip(paths, raw_variants))
    if engine == "sglang":
        for variant_path, variant in zip(paths, variants):
            _check_sglang_context(variant_path, variant, env)
    if engine == "command":
        for variant_path, variant in zip(paths, variants):
            if variant.vram_mb is None:
                raise ConfigError(f"{variant_path}.vram_mb: a command engine needs its VRAM "
                                  f"need in MiB (lkn cannot estimate it)")
    sizes = [v.ctx_size for v in variants]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"{t.key('variants')}: two variants share ctx_size "
                          f"{show(sorted(s for s in sizes if sizes.count(s) > 1)[0])}")
    return tuple(sorted((replace(v, args=model_args + v.args) for v in variants),
                        key=lambda v: v.ctx_size))


def build_config(tables: dict[str, Any], path: str = "") -> Config:
    """Check the whole file, then raise one ConfigError listing every error (its ``errors``)."""
    with collecting() as errors:
        try:
            server = _server(tables.get("server"))
        except ConfigError as exc:
            errors.append(str(exc))
            server = ServerConfig()
        raw_models = tables.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            errors.append(f"models: must be a non-empty list of model tables, "
                          f"got {show(raw_models)}")
            raw_models = []
        models: list[tuple[int, ModelConfig]] = []
        unbuilt: dict[str, str] = {}
        for i, raw in enumerate(raw_models, 1):
            try:
                models.append((i, _model(f"models[{i}]", raw, server)))
            except _Reported:
                pass
            except ConfigError as exc:  # this model cannot be built; check the others
                errors.append(str(exc))
            else:
                continue
            for n in _raw_names(raw):
                unbuilt.setdefault(n, f"models[{i}]")
    seen: dict[str, str] = {}
    for i, model in models:
        for n in model.names:
            if n in seen:
                errors.append(f"models[{i}]: name or alias {show(n)} is already used by "
                              f"{seen[n]}")
            seen.setdefault(n, f"models[{i}]")
    # A model with errors still has its name: references to it are not errors of their own.
    seen = {**unbuilt, **seen}
    for i, model in models:
        named = [("homeostasis.escalate_to", model.homeostasis.escalate_to),
                 ("context_fallback", model.context_fallback),
                 *((f"fallbacks[{j}]", n) for j, n in enumerate(model.fallbacks, 1))]
        for key, target in named:
            if target is None:
                continue
            if target not in seen:
                errors.append(f"models[{i}].{key}: no such model, got {show(target)}")
            elif target in model.names and key != "homeostasis.escalate_to":
                errors.append(f"models[{i}].{key}: a model cannot fall back to itself")
    for j, name in enumerate(server.preload, 1):
        if name not in seen:
            errors.append(f"server.preload[{j}]: no such model, got {show(name)}")
    if errors:
        raise ConfigError.listing(list(dict.fromkeys(errors)))  # each once, in order
    return Config(server=server, models=tuple(m for _, m in models), path=path)


def _raw_names(raw: Any) -> list[str]:
    """The name and aliases a model table that failed to build meant to have."""
    if not isinstance(raw, dict):
        return []
    names = [raw.get("name")]
    aliases = raw.get("aliases")
    if isinstance(aliases, list):
        names += aliases
    return [n for n in names if isinstance(n, str) and n]


def missing_model_files(cfg: Config) -> list[str]:
    """``model@ctx: path`` for every variant whose model file does not exist."""
    return [f"{m.variant_name(v)}: {v.model_file}" for p in cfg.models
            for m in p.engine_models for v in m.variants
            if m.upstream is None and not (m.engine == "command" and not v.model_file)
            and not os.path.exists(v.model_file)]


def load_config(path: str) -> Config:
    return build_config(load_lua_tables(path, ["server", "models"]), path=os.path.abspath(path))


def summary(cfg: Config) -> str:
    s = cfg.server
    lines = [f"config {cfg.path}",
             f"  listen {', '.join(s.listen)}; api keys: {len(s.api_keys) or 'none'}; "
             f"VRAM budget {s.vram_budget_mb} MiB; "
             f"engine ports {s.port_range[0]}-{s.port_range[1]}",
             f"  homeostasis {s.homeostasis.mode} (threshold {s.homeostasis.threshold}, "
             f"top_k {s.homeostasis.top_k}, intervention {s.homeostasis.intervention})"]
    for m in cfg.models:
        aliases = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        lines.append(f"  model {m.name}{aliases}: {m.engine}, "
                     f"contexts {', '.join(str(v.ctx_size) for v in m.variants)}")
        if m.backends:
            lines.append(f"    {len(m.backends)} backends, {m.balance}: "
                         f"{', '.join(b.name for b in m.backends)}")
            continue
        if m.upstream is not None:
            key = f", key from ${m.upstream.api_key_env}" if m.upstream.api_key_env else ""
            lines.append(f"    upstream {m.upstream.url} as {m.upstream.model or m.name}{key}")
            continue
        for v in m.variants:
            exists = "" if os.path.exists(v.model_file) else "  [file missing]"
            lines.append(f"    ctx {v.ctx_size}: {v.model_file}{exists}")
    return "\n".join(lines)
