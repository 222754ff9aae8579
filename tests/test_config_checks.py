"""lkn.config.checks: the checks across models, called on built models (no Lua)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from lkn.config import HomeostasisConfig, ModelConfig, VariantConfig
from lkn.config.checks import cross_model_errors

V = (VariantConfig(ctx_size=512, model_file="m.gguf", gpu_layers=0),)


def model(name: str, **kw: Any) -> ModelConfig:
    return replace(ModelConfig(name=name, engine="llamacpp", variants=V), **kw)


@pytest.mark.parametrize("models, unbuilt, preload, errors", [
    ([model("a"), model("b")], {}, (), []),
    ([model("a"), model("a")], {}, (), ['models[2]: name or alias "a" is already used by models[1]']),
    ([model("a"), model("b", aliases=("a",))], {}, (),
     ['models[2]: name or alias "a" is already used by models[1]']),
    ([model("a", fallbacks=("b",))], {}, (), ['models[1].fallbacks[1]: no such model, got "b"']),
    ([model("a", fallbacks=("b",))], {"b": "models[2]"}, (), []),  # b had errors of its own
    ([model("a", fallbacks=("a",))], {}, (), ["models[1].fallbacks[1]: a model cannot fall back to itself"]),
    ([model("a", context_fallback="a")], {}, (),
     ["models[1].context_fallback: a model cannot fall back to itself"]),
    ([model("a", homeostasis=HomeostasisConfig(escalate_to="a"))], {}, (), []),
    ([model("a", homeostasis=HomeostasisConfig(escalate_to="z"))], {}, (),
     ['models[1].homeostasis.escalate_to: no such model, got "z"']),
    ([model("a")], {}, ("a", "z"), ['server.preload[2]: no such model, got "z"']),
])
def test_cross_model_errors(models: list[ModelConfig], unbuilt: dict[str, str],
                            preload: tuple[str, ...], errors: list[str]) -> None:
    numbered = list(enumerate(models, 1))
    assert cross_model_errors(numbered, unbuilt, preload) == errors
