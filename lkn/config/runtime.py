"""Backends added and removed while lkn runs (the admin API): checked like the file's own."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from lkn.config.models import Reported, parse_backend, union_variants
from lkn.config.schema import Config, ModelConfig
from lkn.config.values import collecting
from lkn.errors import ConfigError


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
    return replace(backend, breaker=model.breaker)


def with_backends(cfg: Config, name: str, backends: tuple[ModelConfig, ...]) -> Config:
    """``cfg`` with the backends of model ``name`` replaced."""
    models = tuple(replace(m, backends=backends, variants=union_variants(backends))
                   if m.name == name else m for m in cfg.models)
    return replace(cfg, models=models)
