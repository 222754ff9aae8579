"""A ``models`` entry as a ModelConfig: its variants, its engine's own checks, its backends.

Errors are collected (``values.report``) so that one pass over the file lists them all; a model
that cannot be built at all raises ``Reported`` once its errors are collected."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lkn.config.schema import (CACHE_TYPES, ENGINES, INHERITED, PUBLIC_ONLY, REMOTE_CTX,
                               REMOTE_PARALLEL, STRATEGIES, ModelConfig, ServerConfig,
                               VariantConfig)
from lkn.config.sections import (env_name, health_path, parse_breaker, parse_cache,
                                 parse_homeostasis,
                                 parse_upstream)
from lkn.config.values import (ALLOW_LONGER_CONTEXT, TOOL_CALL_MODES, Table, allows_longer_context,
                               boolean, choice,
                               env_table, gpu_layers, hf_context_limit, integer, model_file,
                               number, reasoning_mode, report, show, string, strings)
from lkn.errors import ConfigError


class Reported(ConfigError):
    """A table that cannot be built; its errors were already collected."""


@dataclass
class _ModelDefaults:
    """A model's own variant settings, for each variant that does not set them."""
    ctx_size: int | None
    model_file: str | None
    gpu_layers: int
    cache_type: str
    vram_mb: int | None
    bad: set[str] = field(default_factory=set)


def parse_model(path: str, value: Any, server: ServerConfig) -> ModelConfig:
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
        vram_mb=t.get("vram_mb", integer(1), None),
    )
    # Invalid model-level values (already reported) that variants would inherit.
    defaults.bad = {k for k in ("ctx_size", "model_file")
                    if t.value.get(k) is not None and not getattr(defaults, k)}
    model_args = t.get("args", strings, ())
    env = t.get("env", env_table, ())
    raw_upstream = t.raw("upstream")
    upstream = None if raw_upstream is None else parse_upstream(t.key("upstream"), raw_upstream)
    if upstream is not None:
        engine = "remote"
    command = _command(t, engine)
    backends = _backends(t, name or "?", server)
    if t.raw("backends") is not None:
        engine = "backends"
    try:
        variants = (union_variants(backends) if engine == "backends" else
                    _remote_variants(t, defaults) if upstream is not None else
                    _variants(t, path, engine, defaults, model_args, env))
    except Reported:
        variants = ()
    except ConfigError as exc:  # the rest of the model is still checked
        report(exc)
        variants = ()
    homeo = t.raw("homeostasis")
    homeostasis = (server.homeostasis if homeo is None else
                   parse_homeostasis(t.key("homeostasis"), homeo, server.homeostasis))
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
        reranking=t.get("reranking", boolean, False),
        tool_calls=t.get("tool_calls", choice(TOOL_CALL_MODES), "auto"),
        # a remote server batches for itself: lkn's queue only holds what exceeds this
        parallel=t.get("parallel", integer(1), REMOTE_PARALLEL if upstream else 1),
        default_max_tokens=t.get("default_max_tokens", integer(1), 512),
        homeostasis=homeostasis,
        cache=server.cache if cache is None else parse_cache(t.key("cache"), cache, server.cache),
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
        breaker=parse_breaker(t.key("breaker"), t.raw("breaker")),
        retries=t.get("retries", integer(0), 2),
        command=command,
        health_path=t.get("health_path", health_path, "/health"),
        engine_key_env=t.get("engine_key_env", env_name, None),
        fallbacks=t.get("fallbacks", strings, ()),
        context_fallback=t.get("context_fallback", string, None),
        pinned=t.get("pinned", boolean, False),
        loading_events=t.get("loading_events", boolean, False),
    )
    t.finish()
    if not variants or name is None:
        raise Reported(f"{path}: has errors")
    if backends:  # each backend is answerable to its public model's breaker settings
        model = replace(model, backends=tuple(replace(b, breaker=model.breaker)
                                              for b in backends),
                        backend_defaults=tuple((k, t.value[k]) for k in INHERITED
                                               if t.value.get(k) is not None))
    return model


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


def _variant(path: str, value: Any, model: _ModelDefaults) -> VariantConfig:
    t = Table(path, value)
    for key in model.bad:
        if t.value.get(key) is None:  # it would inherit the model's invalid value
            raise Reported(f"{path}: inherits an invalid {key}")
    ctx = t.required("ctx_size", integer(1), model.ctx_size, "a positive integer")
    file = t.required("model_file", model_file, model.model_file, "a non-empty string")
    variant = VariantConfig(
        ctx_size=ctx,
        model_file=file,
        gpu_layers=t.get("gpu_layers", gpu_layers, model.gpu_layers),
        cache_type=t.get("cache_type", choice(CACHE_TYPES), model.cache_type),
        args=t.get("args", strings, ()),  # the model's args come first (_variants)
        vram_mb=t.get("vram_mb", integer(1), model.vram_mb),
    )
    t.finish()
    return variant


def _check_sglang_context(path: str, variant: VariantConfig,
                          env: tuple[tuple[str, str], ...]) -> None:
    """SGLang exits at start when ctx_size exceeds the model's own maximum (see
    values.hf_context_limit): say so when the config is loaded, not at the first
    request."""
    limit = hf_context_limit(variant.model_file)
    if limit is None or variant.ctx_size <= limit or allows_longer_context(env):
        return
    raise ConfigError(
        f"{path}.ctx_size: {variant.ctx_size} is longer than the {limit} tokens the model's "
        f"config.json allows, and SGLang would refuse to start; lower it, or set "
        f'env = {{ {ALLOW_LONGER_CONTEXT} = "1" }} on the model to run it anyway')


def _remote_variants(t: Table, defaults: _ModelDefaults) -> tuple[VariantConfig, ...]:
    """One variant, no file, no VRAM: the remote server decides what fits."""
    if t.raw("variants") is not None:
        raise ConfigError(f"{t.key('variants')}: a model served by an upstream has no "
                          f"variants (set ctx_size for its context)")
    return (VariantConfig(ctx_size=defaults.ctx_size or REMOTE_CTX, model_file="",
                          gpu_layers=0, vram_mb=0),)


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


def _backends(t: Table, name: str, server: ServerConfig) -> tuple[ModelConfig, ...]:
    raw = t.raw("backends")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{t.key('backends')}: must be a non-empty list of backend tables, "
                          f"got {show(raw)}")
    inherit = {k: t.value[k] for k in INHERITED if t.value.get(k) is not None}
    out = [parse_backend(f"{t.key('backends')}[{i}]", str(i), entry, name, server, inherit)
           for i, entry in enumerate(raw, 1)]
    ids = [b.name for b in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{t.key('backends')}: two backends share an id")
    return tuple(out)


def parse_backend(path: str, default_id: str, entry: Any, name: str, server: ServerConfig,
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
    backend = parse_model(path, {**entry, "name": f"{name}/{label}"}, server)
    return replace(backend, parent=name, weight=weight)


def union_variants(backends: tuple[ModelConfig, ...]) -> tuple[VariantConfig, ...]:
    return tuple(sorted((v for b in backends for v in b.variants), key=lambda v: v.ctx_size))
