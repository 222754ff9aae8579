"""The whole file: ``load_config(path)`` runs the Lua file and ``build_config`` checks its
``server`` and ``models`` tables, then the references between models, and raises one
ConfigError listing every error."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from lkn.config.checks import cross_model_errors
from lkn.config.keys import unknown_models, with_public_models
from lkn.config.lua import load_lua_tables
from lkn.config.models import Reported, parse_model
from lkn.config.schema import Config, ModelConfig, ServerConfig
from lkn.config.sections import parse_server
from lkn.config.values import collecting, show
from lkn.errors import ConfigError


def build_config(tables: dict[str, Any], path: str = "") -> Config:
    """Check the whole file, then raise one ConfigError listing every error (its ``errors``)."""
    with collecting() as errors:
        try:
            server = parse_server(tables.get("server"))
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
                models.append((i, parse_model(f"models[{i}]", raw, server)))
            except Reported:
                pass
            except ConfigError as exc:  # this model cannot be built; check the others
                errors.append(str(exc))
            else:
                continue
            # A model with errors still has its name: references to it are not errors too.
            for n in _raw_names(raw):
                unbuilt.setdefault(n, f"models[{i}]")
    errors += cross_model_errors(models, unbuilt, server.preload)
    names = {n: m.name for _, m in models for n in m.names}
    errors += unknown_models(server.keys, set(names) | set(unbuilt))
    if errors:
        raise ConfigError.listing(list(dict.fromkeys(errors)))  # each once, in order
    # A key's models by their public names: enforcement compares resolved models.
    server = replace(server, keys=with_public_models(server.keys, names))
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


def load_config(path: str) -> Config:
    return build_config(load_lua_tables(path, ["server", "models"]), path=os.path.abspath(path))
