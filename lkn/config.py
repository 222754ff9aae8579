"""The Lua configuration file as frozen dataclasses.

``load_config(path)`` runs the file (see ``luaload``), then validates the ``server`` and ``models``
tables. Every error names the key path with Lua's 1-based indices and the bad value, e.g.
``models[2].ctx_size: must be a positive integer, got "big"``. Unknown keys are errors too: a typo
in a production config should not silently fall back to a default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .config_values import (ALLOW_LONGER_CONTEXT, Table, allows_longer_context, boolean, choice,
                            env_table, gpu_layers, hf_context_limit, integer, listen_list,
                            model_file, number, parse_listen, port_range, reasoning_mode,
                            resolve_model_file, show, string, strings)
from .errors import ConfigError
from .luaload import load_lua_tables

__all__ = ["CacheConfig", "Config", "ConfigError", "HomeostasisConfig", "ModelConfig",
           "ServerConfig", "VariantConfig", "load_config", "build_config", "parse_listen",
           "resolve_model_file", "summary"]

ENGINES = ("llamacpp", "sglang")
HOMEOSTASIS_MODES = ("homeostatic", "passthrough")
INTERVENTIONS = ("verify_prompt", "escalate", "reasoning", "none")
PROBE_AGGREGATES = ("first", "mean", "max", "answer", "q50", "q75", "q90")
PROBE_SCORES = ("entropy", "margin", "surprise")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
DEFAULT_VERIFY_PROMPT = ("Think carefully, verify your assumptions, and reason step-by-step "
                         "before answering.")


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

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


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
        api_keys=t.get("api_keys", strings, d.api_keys),
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
    ctx = t.get("ctx_size", integer(1), model.ctx_size)
    if ctx is None:
        raise ConfigError(f"{t.key('ctx_size')}: must be a positive integer, got nil")
    file = t.get("model_file", model_file, model.model_file)
    if file is None:
        raise ConfigError(f"{t.key('model_file')}: must be a non-empty string, got nil")
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


def _model(path: str, value: Any, server: ServerConfig) -> ModelConfig:
    t = Table(path, value)
    name = t.get("name", string, None)
    if name is None:
        raise ConfigError(f"{t.key('name')}: must be a non-empty string, got nil")
    engine = t.get("engine", choice(ENGINES), "llamacpp")
    defaults = _ModelDefaults(
        ctx_size=t.get("ctx_size", integer(1), None),
        model_file=t.get("model_file", model_file, None),
        gpu_layers=t.get("gpu_layers", gpu_layers, 999),
        cache_type=t.get("cache_type", choice(CACHE_TYPES), "f16"),
        args=(),
        vram_mb=t.get("vram_mb", integer(1), None),
    )
    model_args = t.get("args", strings, ())
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
    env = t.get("env", env_table, ())
    if engine == "sglang":
        for variant_path, variant in zip(paths, variants):
            _check_sglang_context(variant_path, variant, env)
    sizes = [v.ctx_size for v in variants]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"{t.key('variants')}: two variants share ctx_size "
                          f"{show(sorted(s for s in sizes if sizes.count(s) > 1)[0])}")
    variants = tuple(sorted((replace(v, args=model_args + v.args) for v in variants),
                            key=lambda v: v.ctx_size))
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
        parallel=t.get("parallel", integer(1), 1),
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
    )
    t.finish()
    return model


def build_config(tables: dict[str, Any], path: str = "") -> Config:
    server = _server(tables.get("server"))
    raw_models = tables.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(f"models: must be a non-empty list of model tables, "
                          f"got {show(raw_models)}")
    models = tuple(_model(f"models[{i}]", m, server) for i, m in enumerate(raw_models, 1))
    seen: dict[str, str] = {}
    for i, model in enumerate(models, 1):
        for n in model.names:
            if n in seen:
                raise ConfigError(f"models[{i}]: name or alias {show(n)} is already used by "
                                  f"{seen[n]}")
            seen[n] = f"models[{i}]"
    for i, model in enumerate(models, 1):
        target = model.homeostasis.escalate_to
        if target is not None and target not in seen:
            raise ConfigError(f"models[{i}].homeostasis.escalate_to: no such model, "
                              f"got {show(target)}")
    return Config(server=server, models=models, path=path)


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
        for v in m.variants:
            exists = "" if os.path.exists(v.model_file) else "  [file missing]"
            lines.append(f"    ctx {v.ctx_size}: {v.model_file}{exists}")
    return "\n".join(lines)
