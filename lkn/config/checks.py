"""Checks across models, once each model was built on its own: names used twice, and names
(fallbacks, escalation, preload) that refer to no model."""
from __future__ import annotations

from collections.abc import Sequence

from lkn.config.schema import ModelConfig
from lkn.config.values import show

Numbered = Sequence[tuple[int, ModelConfig]]  # a model and its 1-based place in ``models``


def cross_model_errors(models: Numbered, unbuilt: dict[str, str],
                       preload: Sequence[str]) -> list[str]:
    """Every error between models, in the file's order. ``unbuilt``: the names of models that
    had errors of their own (name -> its key path); references to them are not errors too."""
    errors, seen = duplicate_names(models)
    known = {**unbuilt, **seen}
    return errors + unknown_references(models, known) + unknown_preloads(preload, known)


def duplicate_names(models: Numbered) -> tuple[list[str], dict[str, str]]:
    """Errors for names and aliases used twice, and every name -> the first model using it."""
    errors: list[str] = []
    seen: dict[str, str] = {}
    for i, model in models:
        for n in model.names:
            if n in seen:
                errors.append(f"models[{i}]: name or alias {show(n)} is already used by "
                              f"{seen[n]}")
            seen.setdefault(n, f"models[{i}]")
    return errors, seen


def unknown_references(models: Numbered, known: dict[str, str]) -> list[str]:
    """Fallbacks, context fallbacks, escalation targets and verifiers that name no model, and
    fallbacks to the model itself (an escalation to, or a verifier that is, the model itself
    is not an error here: its answer judged by itself)."""
    errors: list[str] = []
    for i, model in models:
        named = [("homeostasis.escalate_to", model.homeostasis.escalate_to),
                 ("homeostasis.verifier", model.homeostasis.verifier),
                 ("context_fallback", model.context_fallback),
                 *((f"fallbacks[{j}]", n) for j, n in enumerate(model.fallbacks, 1))]
        for key, target in named:
            if target is None:
                continue
            if target not in known:
                errors.append(f"models[{i}].{key}: no such model, got {show(target)}")
            elif target in model.names and not key.startswith("homeostasis."):
                errors.append(f"models[{i}].{key}: a model cannot fall back to itself")
    return errors


def unknown_preloads(preload: Sequence[str], known: dict[str, str]) -> list[str]:
    return [f"server.preload[{j}]: no such model, got {show(name)}"
            for j, name in enumerate(preload, 1) if name not in known]
