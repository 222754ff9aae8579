"""The tables that are not models: ``server`` and the ``homeostasis``, ``cache``, ``breaker``
and ``upstream`` tables a model or the server holds."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from typing import Any

from lkn.config.keys import parse_keys
from lkn.config.schema import (ACTIVITY_CAPTURE, HOMEOSTASIS_MODES, INTERVENTIONS,
                               PROBE_AGGREGATES, PROBE_SCORES, ActivityConfig, BreakerPolicy,
                               CacheConfig, HomeostasisConfig, ServerConfig, UpstreamConfig)
from lkn.config.values import (Table, boolean, choice, integer, listen_list, number, origins,
                               port_range, secrets, show, string, strings)
from lkn.errors import ConfigError


def parse_homeostasis(path: str, value: Any, base: HomeostasisConfig) -> HomeostasisConfig:
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
        analytic_share=t.get("analytic_share", number(0.0, 1.0), base.analytic_share),
        share_window=t.get("share_window", integer(32), base.share_window),
        verifier=t.get("verifier", string, base.verifier),
        verifier_question=t.get("verifier_question", string, base.verifier_question),
    )
    t.finish()
    return result


def parse_cache(path: str, value: Any, base: CacheConfig) -> CacheConfig:
    t = Table(path, value)
    result = CacheConfig(
        enabled=t.get("enabled", boolean, base.enabled),
        ttl_s=t.get("ttl_s", number(0.001), base.ttl_s),
        max_mb=t.get("max_mb", number(0.001), base.max_mb),
    )
    t.finish()
    return result


def parse_activity(path: str, value: Any) -> ActivityConfig:
    t = Table(path, value)
    d = ActivityConfig()
    result = ActivityConfig(
        enabled=t.get("enabled", boolean, d.enabled),
        retention_days=t.get("retention_days", number(0.0), d.retention_days),
        capture=t.get("capture", choice(ACTIVITY_CAPTURE), d.capture),
        capture_kb=t.get("capture_kb", integer(1), d.capture_kb),
    )
    t.finish()
    return result


def parse_server(value: Any) -> ServerConfig:
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
        swap_cost_s=t.get("swap_cost_s", number(0.0), d.swap_cost_s),
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
        runtime_upstreams=t.get("runtime_upstreams", strings, d.runtime_upstreams),
        trusted_proxies=t.get("trusted_proxies", networks, d.trusted_proxies),
        metrics_public=t.get("metrics_public", boolean, d.metrics_public),
        allowed_hosts=tuple(h.lower() for h in t.get("allowed_hosts", strings,
                                                      d.allowed_hosts)),
        body_timeout_s=t.get("body_timeout_s", number(0.001), d.body_timeout_s),
        max_body_mb=t.get("max_body_mb", number(0.001, 1024.0), d.max_body_mb),
        max_in_flight=t.get("max_in_flight", integer(1), d.max_in_flight),
        responses_store_size=t.get("responses_store_size", integer(0), d.responses_store_size),
        responses_store_age_s=t.get("responses_store_age_s", number(1.0),
                                    d.responses_store_age_s),
        responses_store_mb=t.get("responses_store_mb", number(0.001), d.responses_store_mb),
    )
    activity = t.raw("activity")
    if activity is not None:
        cfg = replace(cfg, activity=parse_activity("server.activity", activity))
    homeo = t.raw("homeostasis")
    if homeo is not None:
        cfg = replace(cfg, homeostasis=parse_homeostasis("server.homeostasis", homeo, d.homeostasis))
    cache = t.raw("cache")
    if cache is not None:
        cfg = replace(cfg, cache=parse_cache("server.cache", cache, d.cache))
    cfg = replace(cfg, keys=parse_keys(t.raw("keys"), cfg.api_keys, cfg.admin_keys))
    t.finish()
    return cfg


def parse_breaker(path: str, value: Any) -> BreakerPolicy:
    if value is None:
        return BreakerPolicy()
    t = Table(path, value)
    d = BreakerPolicy()
    result = BreakerPolicy(failures=t.get("failures", integer(1), d.failures),
                           open_s=t.get("open_s", number(0.0), d.open_s),
                           successes=t.get("successes", integer(1), d.successes))
    t.finish()
    return result


def parse_upstream(path: str, value: Any) -> UpstreamConfig:
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


def networks(path: str, value: Any) -> tuple[str, ...]:
    """Addresses or CIDRs (``"10.0.0.0/8"``, ``"::1"``), checked here so a typo fails the load."""
    items = strings(path, value)
    for i, item in enumerate(items):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{path}[{i + 1}]: must be an address or CIDR like "
                              f"\"10.0.0.0/8\", got {show(item)}") from None
    return items


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
