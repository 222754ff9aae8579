"""The homeostasis table's probe settings: what parses, and what is an error naming its key."""
from __future__ import annotations

from typing import Any

import pytest

from lkn.config import ConfigError, build_config


def homeostasis(**fields: Any) -> Any:
    cfg = build_config({"models": [{"name": "m", "model_file": "/x.gguf", "ctx_size": 512,
                                    "homeostasis": fields}]})
    return cfg.models[0].homeostasis


@pytest.mark.parametrize("fields, expected", [
    ({}, {"probe_score": "entropy", "probe_aggregate": "first", "probe_tokens": 1}),
    ({"probe_score": "margin", "probe_aggregate": "q75", "probe_tokens": 16},
     {"probe_score": "margin", "probe_aggregate": "q75", "probe_tokens": 16}),
    ({"probe_score": "surprise", "probe_aggregate": "q90"},
     {"probe_score": "surprise", "probe_aggregate": "q90"}),
])
def test_probe_settings_parse(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    h = homeostasis(**fields)
    assert {k: getattr(h, k) for k in expected} == expected


@pytest.mark.parametrize("fields, message", [
    ({"probe_score": "vibes"}, "models[1].homeostasis.probe_score"),
    ({"probe_aggregate": "q99"}, "models[1].homeostasis.probe_aggregate"),
])
def test_bad_probe_settings_name_their_key(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        homeostasis(**fields)
